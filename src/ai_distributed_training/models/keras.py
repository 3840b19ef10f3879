"""Keras 3 models on the torch backend (``KERAS_BACKEND=torch``): a ``keras.Model`` is then an
``nn.Module``, trained like any other, with one difference handled here.

Keras names layers from a per-process counter, and its state-dict keys carry those names
(``_torch_params.dense_6/bias``): the same model built in a worker and in the caller has other
keys. Its weights are therefore matched by position (the order of layers and weights is the
model's structure, the same in every process), never by name.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def is_keras(module: nn.Module) -> bool:
    """Whether ``module`` is a Keras model or layer (without importing Keras)."""
    return any(c.__module__.split(".")[0] == "keras" for c in type(module).__mro__)


def structure_keys(module: nn.Module) -> list[str]:
    """The module's state-dict keys as they identify its structure: Keras modules by position
    (their names depend on what else the process built), others by name."""
    keys = list(module.state_dict())
    return [str(i) for i in range(len(keys))] if is_keras(module) else keys


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``module.load_state_dict(state)``; a Keras module's by position (see above).

    Raises:
        RuntimeError: the state does not fit the module (another structure).
    """
    if not is_keras(module):
        module.load_state_dict(state)
        return
    own = module.state_dict()
    if len(own) != len(state):
        raise RuntimeError(
            f"the Keras model has {len(own)} weights, the trained state {len(state)}: another model"
        )
    renamed = {}
    for (key, mine), (their_key, value) in zip(own.items(), state.items(), strict=True):
        if mine.shape != value.shape:
            raise RuntimeError(
                f"weight {key} has shape {tuple(mine.shape)}, the trained {their_key} "
                f"{tuple(value.shape)}: another model"
            )
        renamed[key] = value
    module.load_state_dict(renamed)

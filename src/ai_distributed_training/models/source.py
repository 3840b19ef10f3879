"""Model inputs -> ``nn.Module``: built-in architectures, user modules and user factories.

A model input is one of:

* a spec dict ``{"model_name": ..., "architecture": "mlp" | "linear", ...}`` (see
  :class:`~.config.ModelSpec`); input and output sizes come from the data;
* an ``nn.Module`` instance (trained starting from its current weights);
* a zero-argument factory returning an ``nn.Module`` (called in every worker after seeding, so
  all workers start from the same weights);
* a dict of those by name (``{"G": ..., "D": ...}``), trained together by a ``train_step``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import ModelSpec, validate
from ..data.types import DataInfo
from ..errors import ConfigError, ConfigTypeError
from ..host import payload_bytes
from .builtin import ARCHITECTURES, FSDP_BLOCKS


def check_fits_data(model: ModelSource, info: DataInfo) -> None:
    """A built-in architecture meant for the data's kind: the transformer for token sequences,
    the others for feature vectors. Raises ConfigError naming both."""
    if model.spec is None:
        return  # the user's model: theirs to match to the data
    if info.structured:
        raise ConfigError(
            f"the built-in {model.spec.architecture!r} model takes (inputs, targets) tensor "
            f"data; this data's batches are structured ({info.description}): pass your own "
            "model (an nn.Module, a factory, a Hugging Face or Keras model)"
        )
    transformer = model.spec.architecture == "transformer"
    if transformer != info.tokens:
        wanted = "token data ({'samples', 'seq_len', 'vocab_size'} or {'tokens': ids})"
        raise ConfigError(
            f"architecture={model.spec.architecture!r} does not fit the data ({info.description}); "
            + (f"the transformer needs {wanted}" if transformer else
               "token sequences need architecture='transformer' (or your own model)")
        )  # fmt: skip


class Models(nn.ModuleDict):
    """Several models trained together by a ``train_step`` (a GAN's generator and
    discriminator, a teacher and a student), by name. One module, so that checkpoints, the
    fingerprint and the result treat them as one; the strategy wraps each one on its own."""


@dataclass(frozen=True)
class ModelSource:
    """A validated model input, picklable (with cloudpickle) to the workers."""

    name: str
    spec: ModelSpec | None = None
    module: nn.Module | None = None
    factory: Callable[[], nn.Module] | None = None
    #: A dict of models, by name (each one a model input of its own).
    parts: dict[str, ModelSource] | None = None

    def blocks(self) -> list[str]:
        """The module class names FSDP shards one at a time: a built-in architecture's own;
        for the user's models none (the whole model is one unit) unless ``fsdp_blocks`` says."""
        if self.parts is not None:
            return sorted({b for part in self.parts.values() for b in part.blocks()})
        return FSDP_BLOCKS[self.spec.architecture] if self.spec is not None else []

    def skeleton(self, info: DataInfo) -> nn.Module:
        """The model's structure for inspection in the caller: the caller's own module as it is
        (not copied, not moved), else built on the meta device (no memory, no weights) where
        the code allows, else built for real."""
        if self.parts is not None:
            return Models({name: part.skeleton(info) for name, part in self.parts.items()})
        if self.module is not None:
            return self.module
        try:
            with torch.device("meta"):
                return self.build(info)
        except Exception:  # factory code that cannot run on the meta device
            return self.build(info)

    def build(self, info: DataInfo) -> nn.Module:
        """The model to train; call after seeding torch so every worker builds the same one."""
        if self.parts is not None:
            return Models({name: part.build(info) for name, part in self.parts.items()})
        if self.spec is not None:
            in_features = math.prod(info.input_shape)
            return ARCHITECTURES[self.spec.architecture](self.spec, in_features, info.num_outputs)
        if self.module is not None:
            return self.module
        assert self.factory is not None
        return _call_factory(self.factory)


def on_meta_device(module: nn.Module) -> bool:
    """Whether ``module`` has weights on the meta device (shapes only, no memory): a
    :meth:`ModelSource.skeleton`, or a model that FSDP's non-zero ranks build empty."""
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def weight_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers (on the meta device too: their sizes)."""
    return payload_bytes([*module.parameters(), *module.buffers()])


def _all_models(model: Mapping[Any, Any]) -> bool:
    """A dict of models: string keys, each value an nn.Module, a factory or a spec dict."""
    return bool(model) and all(
        isinstance(k, str) and k.isidentifier()
        and (isinstance(v, (nn.Module, Mapping)) or callable(v))
        for k, v in model.items()
    )  # fmt: skip


def _not_a_model_dict(model: Mapping[Any, Any]) -> str:
    """Why a dict without ``model_name`` is not a dict of models either."""
    spec = "a spec dict needs a 'model_name' key (e.g. {'model_name': 'NeuralNet_Model'})"
    if not model:
        return f"the model dict is empty: {spec}, or pass a dict of models by name"
    bad_keys = [k for k in model if not (isinstance(k, str) and k.isidentifier())]
    if bad_keys:
        return (
            f"the model dict's keys {bad_keys!r} are not names: a dict of models maps names "
            f"(identifiers such as 'G', 'D') to models; {spec}"
        )
    bad = {k: type(v).__name__ for k, v in model.items() if not (
        isinstance(v, (nn.Module, Mapping)) or callable(v))}  # fmt: skip
    return (
        f"the model dict has no 'model_name' key and is no dict of models either ({bad} are "
        f"not an nn.Module, a factory or a spec dict); {spec}"
    )


def _call_factory(factory: Callable[[], nn.Module]) -> nn.Module:
    module = factory()
    if not isinstance(module, nn.Module):
        raise ConfigTypeError(
            f"the model factory {getattr(factory, '__name__', factory)!r} "
            f"returned {type(module).__name__}, not an nn.Module"
        )
    return module


def resolve_model(model: Any) -> ModelSource:
    """Validate a model input (see the module docstring) in the caller, before workers start.

    A factory is called once on the ``meta`` device (no memory, no weights) to check that it
    returns an ``nn.Module``.
    """
    if isinstance(model, Mapping) and "model_name" not in model and _all_models(model):
        parts = {str(name): resolve_model(part) for name, part in model.items()}
        return ModelSource("+".join(parts), parts=parts)
    if isinstance(model, Mapping):
        if "model_name" not in model:
            raise ConfigError(_not_a_model_dict(model))
        spec = validate(ModelSpec, model, "model key")
        return ModelSource(spec.model_name, spec=spec)
    if isinstance(model, nn.Module):
        return ModelSource(type(model).__name__, module=model)
    if callable(model):
        try:
            with torch.device("meta"):
                probe = _call_factory(model)
        except ConfigTypeError:
            raise
        except Exception:  # factory code that cannot run on the meta device: run it for real
            probe = _call_factory(model)
        return ModelSource(type(probe).__name__, factory=model)
    raise ConfigTypeError(
        f"model of type {type(model).__name__} is not accepted; pass a dict like "
        f"{{'model_name': 'NeuralNet_Model', 'architecture': one of {sorted(ARCHITECTURES)}}}, "
        "an nn.Module, or a zero-argument function returning an nn.Module"
    )

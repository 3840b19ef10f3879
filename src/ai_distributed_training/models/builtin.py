"""The built-in architectures, by name: an MLP, a linear model and a GPT-style decoder."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..config import ModelSpec
from .transformer import Decoder

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}


class Flatten(nn.Flatten):
    """``nn.Flatten`` that also turns integer inputs into floats (the Linear layers' dtype), so
    the built-in architectures take integer feature tables as they are."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x if x.is_floating_point() else x.float())


def _mlp(spec: ModelSpec, in_features: int, out_features: int) -> nn.Module:
    layers: list[nn.Module] = [Flatten()]
    width = in_features
    for hidden in spec.hidden_sizes:
        layers += [nn.Linear(width, hidden), _ACTIVATIONS[spec.activation]()]
        if spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def _linear(spec: ModelSpec, in_features: int, out_features: int) -> nn.Module:
    return nn.Sequential(Flatten(), nn.Linear(in_features, out_features))


#: Built-in architectures by name: ``builder(spec, in_features, out_features) -> nn.Module``
#: (for the transformer: sequence length and vocabulary size).
ARCHITECTURES: dict[str, Callable[[ModelSpec, int, int], nn.Module]] = {
    "mlp": _mlp,
    "linear": _linear,
    "transformer": Decoder,
}
#: The module classes the FSDP strategy shards one at a time, per built-in architecture.
FSDP_BLOCKS: dict[str, list[str]] = {
    "mlp": ["Linear"],
    "linear": ["Linear"],
    "transformer": ["DecoderBlock"],
}

"""The model layer: model inputs -> ``nn.Module``; the built-in architectures."""

from .builtin import ARCHITECTURES, FSDP_BLOCKS
from .source import (
    Models,
    ModelSource,
    check_fits_data,
    on_meta_device,
    resolve_model,
    weight_bytes,
)
from .transformer import Decoder

__all__ = [
    "ARCHITECTURES",
    "FSDP_BLOCKS",
    "Decoder",
    "ModelSource",
    "Models",
    "check_fits_data",
    "on_meta_device",
    "resolve_model",
    "weight_bytes",
]

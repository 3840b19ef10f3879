"""Parallelism strategies (DDP, FSDP2): objects with one interface, chosen once per rank."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...topology import RankEnv
from .base import Strategy, local_gradients_finite, local_part, model_state_bytes
from .ddp import DDP_BUCKET_MB, DDPStrategy

__all__ = [
    "DDP_BUCKET_MB",
    "DDPStrategy",
    "Strategy",
    "local_gradients_finite",
    "local_part",
    "make_strategy",
    "model_state_bytes",
]


def make_strategy(
    name: str,
    env: RankEnv,
    device: torch.device,
    blocks: Sequence[str],
    compute_dtype: torch.dtype | None,
    *,
    find_unused_parameters: bool = False,
    sync_batchnorm: bool = False,
    compile_backend: str | None = None,
) -> Strategy:
    """The strategy object named by the ``strategy`` setting (``auto`` is resolved by the
    caller before any worker starts); ``blocks``: the module classes FSDP shards one by one;
    ``compile_backend``: the torch.compile backend of the models it wraps (None: eager)."""
    if name == "fsdp":
        # Imported here: FSDP's modules (DCP, DTensor) add ~0.5 s to every worker's start-up.
        from .fsdp import FSDPStrategy

        # Mixed precision on GPU: blocks compute in bf16 (fp16), gradients are reduced in fp32.
        param_dtype = compute_dtype if device.type == "cuda" else None
        return FSDPStrategy(
            env.rank, env.world_size, device, blocks, param_dtype, compile_backend=compile_backend
        )
    return DDPStrategy(
        env.rank,
        env.world_size,
        device,
        find_unused_parameters=find_unused_parameters,
        sync_batchnorm=sync_batchnorm,
        compile_backend=compile_backend,
    )

"""Parallelism strategies (DDP, FSDP2): objects with one interface, chosen once per rank."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...config.sections import ParallelSection
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
    parallel: ParallelSection,
    *,
    env: RankEnv,
    device: torch.device,
    blocks: Sequence[str],
    compute_dtype: torch.dtype | None,
    in_callers_process: bool = False,
) -> Strategy:
    """The strategy object the ``parallel`` section names (``auto`` is resolved by the caller
    before any worker starts), with its options; ``blocks``: the module classes FSDP shards
    one by one; ``compute_dtype``: autocast's (None: fp32); ``in_callers_process``: this
    rank runs in the caller's own process (a torchrun-joined script), whose module instance
    is the caller's own."""
    backend = "inductor" if parallel.compile is True else parallel.compile or None
    # Mixed precision on GPU: blocks compute in bf16 (fp16), gradients are reduced in fp32.
    param_dtype = compute_dtype if device.type == "cuda" else None
    if parallel.tensor_parallel:
        from .tp import TPStrategy  # DTensor's modules: not for every DDP worker

        return TPStrategy(
            env.rank,
            env.world_size,
            device,
            blocks,
            param_dtype,
            tp_size=parallel.tp_size or env.world_size,
            fsdp=parallel.strategy == "fsdp+tp",
            plan=parallel.tp_plan,
            in_callers_process=in_callers_process,
        )
    if parallel.strategy == "fsdp":
        # Imported here: FSDP's modules (DCP, DTensor) add ~0.5 s to every worker's start-up.
        from .fsdp import FSDPStrategy

        return FSDPStrategy(
            env.rank,
            env.world_size,
            device,
            blocks,
            param_dtype,
            compile_backend=backend,
            cpu_offload=parallel.cpu_offload,
            in_callers_process=in_callers_process,
        )
    return DDPStrategy(
        env.rank,
        env.world_size,
        device,
        find_unused_parameters=parallel.find_unused_parameters,
        sync_batchnorm=parallel.sync_batchnorm,
        compile_backend=backend,
    )

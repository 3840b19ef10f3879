"""Tensor parallelism, alone (``"tp"``) or with FSDP (``"fsdp+tp"``), on DTensor.

The ranks form a 2-D mesh ``(dp, tp)`` (torchtitan's layout; ``rank = dp_rank * tp + tp_rank``):
the ``tp`` ranks of a group split each matrix of the model's plan by columns or rows
(``parallelize_module`` with ``ColwiseParallel``/``RowwiseParallel``: Megatron's layout, one
all-reduce after each row-split layer) and compute one replica together, so they read the
same samples; the ``dp`` groups read distinct shares of each global batch, and with
``"fsdp+tp"`` FSDP2 shards the group's parameters over them (``fully_shard`` on the ``dp``
mesh) and averages their gradients. The data side sees ``dp`` ranks
(:class:`~.base.DataCoords`); everything else is FSDP's: sharded from birth, DCP checkpoints
that load resharded at another size, the export shard by shard.

Which matrices are split (a plan: module-name pattern -> ``"colwise"``/``"rowwise"``): the
``tp_plan`` setting; else the model's own: the built-in transformer's
(:data:`~...models.transformer.TP_PLAN`) or a Hugging Face model's ``config.base_model_tp_plan``
(Llama, Mistral, Qwen, ...). Attention must take its head count from the width it is given
(both do).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    parallelize_module,
)

from ...models.parallel_plan import resolved_plan
from .base import DataCoords, local_part
from .fsdp import FSDPStrategy

#: The ``parallelize_module`` style of each plan style (:data:`...models.parallel_plan.STYLES`).
STYLES = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}


class TPStrategy(FSDPStrategy):
    """Tensor parallelism over groups of ``tp_size`` ranks; ``fsdp``: FSDP2 over the groups
    (``"fsdp+tp"``), else there is one group (``"tp"``). ``plan``: the user's ``tp_plan``."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        device: torch.device,
        blocks: Sequence[str],
        param_dtype: torch.dtype | None = None,
        *,
        tp_size: int,
        fsdp: bool,
        plan: Mapping[str, str] | None = None,
        in_callers_process: bool = False,
    ) -> None:
        dp = world_size // tp_size
        self.mesh = init_device_mesh(device.type, (dp, tp_size), mesh_dim_names=("dp", "tp"))
        super().__init__(
            rank,
            world_size,
            device,
            blocks,
            param_dtype,
            in_callers_process=in_callers_process,
            mesh=self.mesh["dp"],  # FSDP shards over the groups
        )
        self.name = "fsdp+tp" if fsdp else "tp"
        # Gathering a weight split both ways (the result, an export) takes two all-gathers,
        # and torch logs a warning for each weight: expected here, not the user's concern.
        logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)
        self.fsdp, self.user_plan = fsdp, dict(plan) if plan else None
        # A group's peers read the same share; its first rank's sums count (DataCoords).
        self.data = DataCoords(rank // tp_size, dp, counts=rank % tp_size == 0)

    def _shard(self, model: nn.Module) -> None:
        """Split the plan's matrices over the group (each rank computed or will initialise
        the same full values: nothing is sent), then FSDP over the groups."""
        styles: dict[str, ParallelStyle] = {}
        for name, style in resolved_plan(model, self.user_plan).items():
            styles[name] = STYLES[style]()
            styles[name].src_data_rank = None  # the same full values on every rank: slice
        parallelize_module(model, self.mesh["tp"], styles)
        if self.fsdp:
            super()._shard(model)

    def no_sync(self, wrapped: nn.Module) -> contextlib.AbstractContextManager[Any]:
        # Without FSDP no gradient is synchronized between backward passes.
        return super().no_sync(wrapped) if self.fsdp else contextlib.nullcontext()

    def clip_grad_norm(self, wrapped: nn.Module, max_norm: float) -> float:
        """Clip to a global 2-norm over parameters that are split (DTensors: each norm is
        completed over its mesh) or replicated (plain tensors: the same on every peer)."""
        grads = [p.grad for p in wrapped.parameters() if p.grad is not None]
        total = math.sqrt(float(_squared(grads, self.device)))
        coefficient = min(max_norm / (total + 1e-6), 1.0)  # torch's clip_grad_norm_'s
        if coefficient < 1.0:
            for g in grads:
                local_part(g).mul_(coefficient)
        return total


def _squared(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The sum of the squares of every gradient's elements, over whole (not local) tensors."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    for g in grads:
        norm = torch.linalg.vector_norm(g, dtype=torch.float64)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        total += norm.to(device) ** 2
    return total

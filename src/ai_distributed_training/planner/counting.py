"""Counting a model for the planner on the meta device (no memory, no compute): parameters,
forward + backward FLOPs per sample (``torch.utils.flop_counter``), bytes of activations saved for
the backward pass per sample; and a worker's resident data."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..data import (
    DataInfo,
    DataSource,
    SyntheticSource,
    TensorFileSource,
    TensorSource,
    example_batch,
)
from ..models import ModelSource
from ..models.parallel_plan import resolved_plan, split_dims
from ..training.optim import loss_sum_fn


@dataclass(frozen=True)
class ModelCount:
    """What the planner needs to know about a model, counted on the meta device."""

    parameters: int
    largest_block_parameters: int  # the biggest direct child: what FSDP gathers at once
    flops_per_sample: float  # forward + backward
    activation_bytes_per_sample: float  # saved for backward
    #: Each parameter as (rows, elements per row): its dim 0, which FSDP shards, and the rest.
    rows: tuple[tuple[int, int], ...] = ()
    #: Each parameter's dimension a tensor-parallel plan splits (0: rows, 1: the rest, -1:
    #: kept whole), in the order of ``rows``; empty: the model has no plan.
    tp_dims: tuple[int, ...] = ()

    def sharded_parameters(self, world_size: int) -> int:
        """Parameters each of ``world_size`` FSDP ranks holds: FSDP2 pads dim 0 of every
        parameter up to a multiple of the world size, so a rank holds ``ceil(rows / n)`` rows
        of each (at 4,096 ranks a parameter of 10 rows costs every rank a whole row, most of
        them padding). Without shapes (an older count): the even share."""
        if not self.rows:
            return math.ceil(self.parameters / world_size)
        return sum(-(-rows // world_size) * per_row for rows, per_row in self.rows)

    def tensor_parallel_parameters(self, tp: int, dp: int = 1) -> int | None:
        """Parameters each worker holds in groups of ``tp`` that split the plan's matrices
        (each slice rounded up), FSDP sharding the slices over ``dp`` groups (dim 0 padded
        as :meth:`sharded_parameters`); None without a plan."""
        if not self.tp_dims:
            return None
        total = 0
        for (rows, per_row), dim in zip(self.rows, self.tp_dims, strict=True):
            rows, per_row = (
                -(-rows // tp) if dim == 0 else rows,
                -(-per_row // tp) if dim == 1 else per_row,
            )
            total += -(-rows // dp) * per_row
        return total


def count_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    task: str,
    tokens: bool = False,
    tp_plan: Mapping[str, str] | None = None,
) -> ModelCount:
    """Count ``model`` (moved to the meta device: no memory, no compute).

    Two batch sizes are counted and differenced, so what does not grow with the batch (e.g.
    the weights a layer saves for its backward) is not taken for activations.
    """
    model = model.to("meta")
    info = DataInfo(1, input_shape, task, 1, "", tokens)  # type: ignore[arg-type]
    (flops_2, saved_2), (flops_4, saved_4) = (_count(model, info, b) for b in (2, 4))
    units = [  # what FSDP gathers at once: direct children, a ModuleList's items each
        unit
        for child in model.children()
        for unit in (child.children() if isinstance(child, nn.ModuleList) else [child])
    ]
    blocks = [sum(p.numel() for p in unit.parameters()) for unit in units]
    params = sum(p.numel() for p in model.parameters())
    rows, tp_dims = parameter_layout(model, tp_plan)
    return ModelCount(
        parameters=params,
        largest_block_parameters=max(blocks, default=params) or params,
        flops_per_sample=(flops_4 - flops_2) / 2,
        activation_bytes_per_sample=max(0.0, (saved_4 - saved_2) / 2),
        rows=rows,
        tp_dims=tp_dims,
    )


def parameter_layout(
    model: nn.Module, tp_plan: Mapping[str, str] | None = None
) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    """``(rows, tp_dims)`` of :class:`ModelCount`: each parameter as (dim 0, elements per row),
    and the dimension ``model``'s tensor-parallel plan (``tp_plan``, or its own) splits (see
    :func:`~..models.parallel_plan.split_dims`)."""
    shapes = [tuple(p.shape) or (1,) for p in model.parameters()]
    rows = tuple((shape[0], math.prod(shape[1:])) for shape in shapes)
    try:
        dims = {
            f"{name}.{param}": dim
            for name, style in resolved_plan(model, tp_plan).items()
            for param, dim in split_dims(model.get_submodule(name), style).items()
        }
    except ValueError:  # no plan, or one no worker could apply (prepare refuses it)
        return rows, ()
    return rows, tuple(dims.get(name, -1) for name, _ in model.named_parameters())


def _count(model: nn.Module, info: DataInfo, batch: int) -> tuple[float, float]:
    """(FLOPs of forward + backward, bytes saved for backward) for one meta batch."""
    x, y = example_batch(info, batch, "meta")
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[id(t)] = t.numel() * t.element_size()
        return t

    with FlopCounterMode(display=False) as counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
        if info.task == "classification":
            loss = loss_sum_fn("classification", None)(out, y)
        else:
            loss = out.float().square().mean()
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops()), float(sum(saved.values()))


def count_source(
    model: ModelSource, info: DataInfo, tp_plan: Mapping[str, str] | None = None
) -> ModelCount:
    """``model`` counted on the meta device: specs and factories are built there (no memory, no
    weights); the caller's own module is copied first, never moved. ``tp_plan``: the user's
    tensor-parallel plan (else the model's own, if it has one)."""
    if model.module is not None:
        module = copy.deepcopy(model.module)
    else:
        with torch.device("meta"):
            module = model.build(info)
    return count_model(module, info.input_shape, info.task, info.tokens, tp_plan)


def data_bytes_per_worker(source: DataSource) -> int:
    """Resident data of one worker: in-memory tensors are memory-mapped by every local worker
    (counted in each one's resident memory, held once by the host); synthetic data is generated
    in each worker (float32 inputs plus the float64 temporaries of labelling them)."""
    info = source.info
    if isinstance(source, SyntheticSource):
        features = math.prod(info.input_shape)
        return info.samples * (4 * features + 8 * features + 8)
    if isinstance(source, (TensorSource, TensorFileSource)):
        return info.samples * (4 * math.prod(info.input_shape) + 8)
    return 0  # a Dataset or file reader: the user's own; not estimated

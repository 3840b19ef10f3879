"""Checks of a tensor-parallel job (``strategy`` 'tp' or 'fsdp+tp') before any worker starts:
a group size that divides the workers, a plan for the model, and matrices and attention heads
that split evenly over a group."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config.sections import Sections
from ..errors import ConfigError
from ..models import Models
from ..models.parallel_plan import resolved_plan, split_dims
from ..models.transformer import DecoderBlock
from ..topology import Topology


def check_tensor_parallel(
    sections: Sections, skeleton: nn.Module, topology: Topology
) -> dict[str, Any]:
    """The resolved ``tp_size`` of a tensor-parallel job (nothing for another strategy).

    Raises:
        ConfigError: a group size that does not fit the workers, a model without a plan, or
            a matrix or head count the group cannot split evenly, naming them.
    """
    parallel, world = sections.parallel, topology.world_size
    if not parallel.tensor_parallel:
        return {}
    tp = _group_size(parallel.strategy, parallel.tp_size, world)
    models = dict(skeleton.items()) if isinstance(skeleton, Models) else {"": skeleton}
    for name, model in models.items():
        try:
            plan = resolved_plan(model, parallel.tp_plan)
        except ValueError as error:
            raise ConfigError(f"{'model ' + repr(name) + ': ' if name else ''}{error}") from None
        _check_heads(model, tp)
        for module_name, style in plan.items():
            _check_splits(model.get_submodule(module_name), module_name, style, tp)
    return {"tp_size": tp}


def _group_size(strategy: str, tp_size: int | None, world: int) -> int:
    """The workers per tensor-parallel group: all of them for 'tp'; a divisor of the workers
    for 'fsdp+tp' (all of them too: one group, which a checkpoint of more groups can resume
    on)."""
    if strategy == "tp":
        if tp_size not in (None, world):
            raise ConfigError(
                f"strategy='tp' splits the model over all {world} workers (tp_size={tp_size} "
                "given); for groups of tp_size workers with FSDP over the groups use "
                "strategy='fsdp+tp'"
            )
        return world
    if tp_size is None or world % tp_size:
        raise ConfigError(
            f"strategy='fsdp+tp' needs tp_size, the workers per tensor-parallel group: a "
            f"divisor of the {world} workers (got {tp_size})"
        )
    return tp_size


def _check_splits(module: nn.Module, name: str, style: str, tp: int) -> None:
    """A planned module is one the styles split (:func:`split_dims`), each split dimension
    a multiple of the group."""
    try:
        dims = split_dims(module, style)
    except ValueError as error:
        raise ConfigError(f"{name!r}: {error}") from None
    for param, dim in dims.items():
        tensor = getattr(module, param, None)  # a Linear without bias has None
        if tensor is not None and tensor.shape[dim] % tp:
            raise ConfigError(
                f"{name}.{param} has {tensor.shape[dim]} along its split dimension {dim}, which "
                f"{tp} tensor-parallel workers cannot split evenly: choose a number of workers "
                "(or tp_size) that divides it"
            )


def _check_heads(model: nn.Module, tp: int) -> None:
    """Each rank computes whole attention heads: the head counts divide by the group."""
    config = getattr(model, "config", None)
    counts = {
        "num_attention_heads": getattr(config, "num_attention_heads", None),
        "num_key_value_heads": getattr(config, "num_key_value_heads", None),
    }
    for block in model.modules():
        if isinstance(block, DecoderBlock):
            counts["heads"] = block.q.out_features // block.head_dim
    for name, count in counts.items():
        if isinstance(count, int) and count % tp:
            raise ConfigError(
                f"the model's {name}={count} do not split over {tp} tensor-parallel workers "
                "(each computes whole heads): choose a number of workers (or tp_size) that "
                "divides it"
            )

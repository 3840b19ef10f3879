"""Checks of the model against the data and the settings, before any worker starts: something
to train, FSDP units that exist, weights that fit the host, the model run on two samples (the
dry run), labels it has outputs for, BatchNorm given enough samples per worker."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..config.sections import Sections
from ..data import DataInfo, DataSource
from ..errors import ConfigError
from ..host import available_memory_bytes, host_memory_bytes
from ..models import ModelSource, weight_bytes
from ..models.meta import tied_aliases
from ..topology import Topology
from ..training.dryrun import (
    DryRunFacts,
    class_dimension,
    classes_from_outputs,
    dry_run,
    dry_run_module,
    dry_run_step,
)
from ..training.initial import stored_shapes
from ..training.sharding import smallest_share
from .tensor_parallel import check_tensor_parallel


def check_on_two_samples(
    model: ModelSource,
    skeleton: nn.Module,
    data: DataSource,
    sections: Sections,
    notes: list[str],
) -> tuple[DataSource, DryRunFacts | None]:
    """The user's model (or train_step) run on two samples of the data (``dry_run``), and
    what its outputs say of the data: whole-number float targets scored as classes, labels
    the model has no output for. The built-in architectures fit the data by construction."""
    step = sections.step
    if not step.dry_run or model.spec is not None:
        return data, None
    checked = dry_run_module(model, skeleton, data.info, trains_on_cpu=not sections.launch.use_gpus)
    if checked is None:
        return data, None
    if step.train_step is not None:
        dry_run_step(checked, data, optim=sections.optim, loop=sections.loop, step=step)
        return data, None
    facts = dry_run(checked, data, step, sections.data.task)
    data = classes_from_outputs(data, facts, notes)
    check_classes(data.info, facts, model.name)
    return data, facts


def check_structure(
    sections: Sections, skeleton: nn.Module, model: ModelSource, topology: Topology
) -> dict[str, Any]:
    """The model's structure against the settings: something to train, the FSDP blocks it
    names, a tensor-parallel plan that splits evenly; returns what they resolve (``tp_size``)."""
    check_trainable(skeleton, model.name)
    check_block_names(sections, skeleton, model)
    return check_tensor_parallel(sections, skeleton, topology)


def check_trainable(skeleton: nn.Module, name: str) -> None:
    """A model with something to train (the built-in step's optimizer needs parameters)."""
    if not any(p.requires_grad for p in skeleton.parameters()):
        what = "no parameters" if next(skeleton.parameters(), None) is None else "every one frozen"
        raise ConfigError(
            f"the model {name} has {what} (requires_grad=False): nothing to train; pass a "
            "model with trainable parameters"
        )


def check_block_names(sections: Sections, skeleton: nn.Module, model: ModelSource) -> None:
    """``fsdp_blocks`` and ``activation_checkpointing`` that name module classes of the model:
    a name that matches none would leave its saving lost without a word. The built-in
    transformer's own ``activation_checkpointing`` and the setting are not both given."""
    present = {type(m).__name__ for m in skeleton.modules()}
    parallel = sections.parallel
    for setting, names in (
        ("fsdp_blocks", parallel.fsdp_blocks),
        ("activation_checkpointing", parallel.activation_checkpointing),
    ):
        missing = [b for b in names or [] if b not in present]
        if missing:
            raise ConfigError(
                f"{setting} names {missing}, no module class of the model; its module classes "
                f"are {sorted(present)}"
            )
    if parallel.activation_checkpointing and model.spec and model.spec.activation_checkpointing:
        raise ConfigError(
            "the model spec's activation_checkpointing=True and the activation_checkpointing "
            f"setting {list(parallel.activation_checkpointing)} both ask for it; pass one"
        )


def check_fits_host(
    skeleton: nn.Module, name: str, data: DataSource, sections: Sections, topology: Topology
) -> None:
    """Weights, and synthetic data each worker generates whole, that fit this host's memory
    (else every worker fails building them, after the launch). Under FSDP (or tensor
    parallelism) this host's workers hold their shards only (built sharded)."""
    memory = host_memory_bytes()
    # auto picks FSDP when needed. (Tensor parallelism leaves some weights whole: roughly.)
    sharded = sections.parallel.shards_model or sections.parallel.strategy == "auto"
    share = topology.local_world_size / topology.world_size if sharded else 1.0
    weights = weight_bytes(skeleton) * share
    if weights > memory:
        raise ConfigError(
            f"the model {name}'s weights take {weights / 2**30:,.1f} GiB"
            f"{' (this host' + chr(39) + 's shards)' if sharded else ''}, more than this "
            f"host's {memory / 2**30:,.1f} GiB of memory: no worker could build it"
        )
    spec = getattr(data, "spec", None)
    if spec is not None:
        values = math.prod(data.info.input_shape) + 1
        size = spec.samples * values * 4
        if size > memory:
            raise ConfigError(
                f"samples={spec.samples} of synthetic data take {size / 2**30:,.1f} GiB, more "
                f"than this host's {memory / 2**30:,.1f} GiB of memory (each worker generates "
                f"them whole); use at most {memory // (values * 4) // 2:,} samples"
            )


def weight_files(sections: Sections, skeleton: nn.Module, model: ModelSource) -> dict[str, str]:
    """The settings about weight files, checked and resolved: ``init_from`` (where the weights
    start from) and ``result_weights`` (where they end)."""
    return check_init_from(sections, skeleton, model) | resolve_result_weights(sections, skeleton)


def resolve_result_weights(sections: Sections, skeleton: nn.Module) -> dict[str, str]:
    """``result_weights`` resolved ('auto' -> 'module' or 'safetensors'); 'safetensors' needs
    a directory to write to (a run directory or checkpoint_dir)."""
    given, checkpoint = sections.checkpoint.result_weights, sections.checkpoint
    has_dir = sections.tracking.runs_dir is not None or checkpoint.directory is not None
    if given == "safetensors" and not has_dir:
        raise ConfigError(
            "result_weights='safetensors' writes the weights into the run directory or "
            "checkpoint_dir; with runs_dir=None set checkpoint_dir, or use 'module'"
        )
    if given != "auto":
        return {}
    big = weight_bytes(skeleton) > available_memory_bytes() // 2
    sharded = sections.parallel.shards_model
    return {"result_weights": "safetensors" if big and sharded and has_dir else "module"}


def check_init_from(sections: Sections, skeleton: nn.Module, model: ModelSource) -> dict[str, str]:
    """``init_from`` names weights this model takes: every weight stored, its shape the
    model's, none of the model's missing (but a tied alias, e.g. an output head that is the
    embedding). Returns the path resolved (the workers may start elsewhere)."""
    given = sections.checkpoint.init_from
    if given is None:
        return {}
    if model.parts is not None:
        raise ConfigError("init_from loads one model's weights; pass several models' own instead")
    path = Path(given).expanduser().resolve()
    try:
        stored = stored_shapes(path)
    except (ValueError, OSError) as err:
        raise ConfigError(str(err)) from None
    wanted = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    aliases = tied_aliases(skeleton)
    missing = [k for k in wanted if k not in stored and aliases.get(k) not in stored]
    unexpected = [k for k in stored if k not in wanted]
    shapes = [f"{k} {stored[k]} (the model: {wanted[k]})" for k in stored
              if k in wanted and stored[k] != wanted[k]]  # fmt: skip
    for problem, names in (("lacks", missing), ("has weights the model has not:", unexpected),
                           ("has other shapes:", shapes)):  # fmt: skip
        if names:
            shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
            raise ConfigError(f"init_from={given!r} {problem} {shown}")
    return {"init_from": str(path)}


def check_classes(info: DataInfo, facts: DryRunFacts | None, name: str) -> None:
    """Class labels the model has outputs for: a label >= its classes fails in every worker
    (cross-entropy's "Target 10 is out of bounds"), after the launch."""
    if facts is None or info.task != "classification" or info.tokens:
        return
    classes = class_dimension(facts.prediction_shape, facts.target_shape)
    if classes is not None and info.num_outputs > classes:
        raise ConfigError(
            f"the labels go up to {info.num_outputs - 1} ({info.num_outputs} classes) but the "
            f"model {name} outputs {classes} classes; give it {info.num_outputs} outputs, or "
            f"labels in 0..{classes - 1}"
        )


def check_batchnorm(
    model: nn.Module,
    info: DataInfo,
    sections: Sections,
    world_size: int,
    held_out: float,
    facts: DryRunFacts | None,
) -> None:
    """BatchNorm in training needs samples in every worker's micro-batch, and 2 or more where
    a layer sees one value per channel per sample (BatchNorm1d on feature vectors, BatchNorm2d
    on 1x1 maps, as the dry run saw; without it, BatchNorm1d is taken as such): with 1 it fails
    in a worker, after the launch. Said before any worker starts, with the way out."""
    layers = {type(m).__name__ for m in model.modules() if isinstance(m, _BatchNorm)}
    if not layers or info.stream:  # a stream's last global batch is not known in advance
        return
    n_train = info.samples - int(info.samples * held_out)
    loop = sections.loop
    share = smallest_share(n_train, loop.batch_size, world_size, loop.drop_last)
    smallest = share // loop.gradient_accumulation_steps
    if facts is not None and facts.batchnorm_values_per_sample is not None:
        need = 2 if facts.batchnorm_values_per_sample == 1 else 1
    else:
        need = 2 if "BatchNorm1d" in layers else 1
    if smallest < need:
        raise ConfigError(
            f"the model's {', '.join(sorted(layers))} layers need at least {need} sample(s) per "
            f"worker in each micro-batch, but with batch_size={loop.batch_size} over nodes="
            f"{world_size} (gradient_accumulation_steps={loop.gradient_accumulation_steps}, "
            f"{n_train} training samples) a worker gets {smallest}; pass drop_last=True (drops "
            "each epoch's last, smaller global batch) or a larger batch_size"
        )

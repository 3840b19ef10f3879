"""What the inputs decide or refuse of the settings: a DataLoader's batch, a custom step's
needs, a stream's split and length, a separate validation set, enough samples per worker.

Each check returns the settings it resolves, by name (an empty dict: none), so that
:func:`~. prepare` applies them once.
"""

from __future__ import annotations

import os
from typing import Any

from torch.utils.data import DataLoader, Dataset

from ..config import TrainingSettings
from ..config.sections import Sections
from ..data import DataInfo, DataSource, resolve_data
from ..data.streams import StreamSource
from ..data.tensors import DatasetSource, TensorSource
from ..errors import ConfigError, warn_user
from ..models import ModelSource


def adopt_loader_batch(settings: TrainingSettings, data: DataSource) -> dict[str, Any]:
    """A user DataLoader's ``batch_size`` (and ``drop_last``) become the settings' where those
    are not set; a different ``batch_size`` setting is a ConfigError: both would claim to be
    the batch."""
    if not isinstance(data, (DatasetSource, StreamSource, TensorSource)):
        return {}
    if data.loader_batch_size is None:
        return {}
    given, theirs = settings.model_fields_set, data.loader_batch_size
    if "batch_size" in given and settings.batch_size != theirs:
        raise ConfigError(
            f"the DataLoader's batch_size={theirs} differs from batch_size="
            f"{settings.batch_size}: batch_size is the GLOBAL batch, split over the nodes (each "
            "rank reads its share); a DataLoader's batch_size is taken as the global batch when "
            "the batch_size setting is not given. Make them equal, or set only one"
        )
    update: dict[str, Any] = {"batch_size": theirs}
    if data.loader_drop_last and "drop_last" not in given:
        update["drop_last"] = True
    return update


def check_custom_step(sections: Sections, model: ModelSource) -> dict[str, Any]:
    """Several models train through a ``train_step``; a dict of optimizers matches the models'
    names; a custom step does its own micro-batching. A train_step has no built-in
    validation: nothing is held out for it."""
    names = sorted(model.parts) if model.parts is not None else ["model"]
    optim = sections.optim
    if sections.step.train_step is None:
        if model.parts is not None:
            raise ConfigError(
                f"a dict of models ({', '.join(names)}) trains through your train_step(ctx, "
                "batch) setting, which says what each model learns; pass train_step=..."
            )
        for what in ("optimizer", "scheduler"):
            if isinstance(getattr(optim, what), dict):
                raise ConfigError(f"a dict of {what}s goes with a dict of models and a train_step")
        return {}
    for what in ("optimizer", "scheduler"):
        given = getattr(optim, what)
        if isinstance(given, dict) and sorted(given) != names:
            raise ConfigError(
                f"the {what} dict's keys {sorted(given)} must be the models' names {names}"
            )
    accumulation = sections.loop.gradient_accumulation_steps
    if accumulation != 1:
        raise ConfigError(
            f"gradient_accumulation_steps={accumulation} does not apply to a train_step: it "
            "gets this worker's whole share of the global batch; split it yourself, backward "
            "each part inside ctx.no_sync(name) but the last"
        )
    if sections.data.validation_data is not None:  # the loop validates with the built-in step
        what = "a dict of models is" if model.parts is not None else "a train_step is"
        raise ConfigError(
            f"validation_data needs the built-in step to evaluate; {what} not validated "
            "(report your own metrics from train_step)"
        )
    return {"validation_split": 0.0}  # nothing held out unused


def check_stream(sections: Sections, data: DataSource) -> tuple[DataSource, dict[str, Any]]:
    """A stream split as ``stream_sharding`` says. One of unknown length trains each epoch
    until it ends (on every rank together), as torch's DataLoader does; what needs the steps in
    all (a schedule by fraction) needs ``max_steps``. It has no held-out split
    (``validation_data`` can validate it). One without a state is re-read on resume (said
    once, here)."""
    if not isinstance(data, StreamSource):
        return data, {}
    data = data.split_by(sections.data.stream_sharding)
    name = type(data.dataset).__name__
    needs_total = sections.optim.needs_total_steps
    if data.info.samples == 0 and sections.loop.max_steps is None and needs_total:
        raise ConfigError(
            f"the stream {name} has no len(), so the steps in all are not known, and "
            f"{', '.join(needs_total)} needs them; pass max_steps (optimizer steps in all), "
            "give the stream a __len__, or use warmup_steps and lr_schedule='constant' (each "
            "epoch then ends where the stream does)"
        )
    if not data.stateful:
        warn_user(
            f"the stream {name} has no state_dict()/load_state_dict(): after a restart it is "
            "read again from its beginning and the global batches already trained are read "
            "and skipped (exact only if it yields the same samples again)"
        )
    return data, {"validation_split": 0.0}


def resolve_validation(sections: Sections, info: DataInfo) -> DataSource | None:
    """The separate validation set, checked to fit the training data (same inputs and task)."""
    options = sections.data
    given = options.validation_data
    if given is None:
        return None
    target = options.target if isinstance(given, (str, os.PathLike)) else None
    collate = options.collate_fn if isinstance(given, (Dataset, DataLoader)) else None
    source = resolve_data(given, options.task or info.task, target, None, collate)
    if source.info.input_shape != info.input_shape:
        raise ConfigError(
            f"validation_data inputs have shape {source.info.input_shape}, the "
            f"training data {info.input_shape}; they must match"
        )
    return source


def check_sizes(sections: Sections, info: DataInfo, held_out: float) -> None:
    """Every worker needs samples: at least one per node overall, and one per node per step;
    ``held_out``: the fraction of the data held out for validation."""
    nodes, batch_size = sections.launch.nodes, sections.loop.batch_size
    n_train = info.samples - int(info.samples * held_out)
    if nodes > n_train and not info.stream:  # a stream's length may be unknown (0)
        raise ConfigError(
            f"nodes={nodes} is more than the {n_train} training samples "
            f"({info.samples} samples, validation_split={held_out:g} as it applies to this "
            f"job); use at most {n_train} nodes"
        )
    if batch_size < nodes:
        raise ConfigError(
            f"batch_size={batch_size} (the GLOBAL batch) is smaller than nodes={nodes}; every "
            f"worker needs a sample per step: use batch_size >= {nodes}"
        )

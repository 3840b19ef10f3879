"""Which run a checkpoint belongs to, and whether another run may continue from it.

Every checkpoint carries the ``run_id`` of the call that wrote it and a fingerprint of what must
match for a run to continue from it: the model's structure (parameter and buffer names, shapes
and dtypes), the data (its size, shapes, task and description) and the settings that change the
math. A restart resumes only its own run's checkpoints; ``resume="auto"`` takes an earlier run's
only when the fingerprints agree, and otherwise names what differs.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..data import DataSource
from ..data.types import source_files
from ..errors import DataChangedError
from ..host import file_fingerprint
from ..models.keras import structure_keys

#: The fingerprint part of each data file the data is read from: ``"data file <path>"``, its
#: :func:`~..host.file_fingerprint` (size, modification time, sampled content hash).
DATA_FILE = "data file "

#: Settings that change what training computes (so a checkpoint only continues under the same).
#: ``epochs`` is not one of them: continuing a run for more epochs is what resuming is for.
#: The strategy is checked on its own (with its own message), ``auto`` following a checkpoint.
MATH_SETTINGS = (
    "batch_size",
    "seed",
    "optimizer",
    "learning_rate",
    "weight_decay",
    "momentum",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "lr_schedule",
    "scheduler",
    "warmup_steps",
    "warmup_ratio",
    "validation_split",
    "loss_fn",
    "forward",
    "count_fn",
    "collate_fn",
    "train_step",
    "precision",
    "task",
)


def new_run_id() -> str:
    """A fresh id for one call of ``train_distributed`` (shared by all its ranks)."""
    return uuid.uuid4().hex[:12]


def fingerprint(model: nn.Module, data: DataSource, settings: Mapping[str, Any]) -> dict[str, str]:
    """What must match for a run to continue from another's checkpoint, as named parts;
    ``model``: the model's structure (its :meth:`~..models.ModelSource.skeleton` will do);
    ``settings``: the settings by name (at least :data:`MATH_SETTINGS`)."""
    info = data.info
    spec = getattr(data, "spec", None)  # a synthetic spec states its seed and sizes
    described = (info.samples, info.input_shape, info.task, info.num_outputs, info.description)
    parts = {
        "model": _short_hash(_structure(model)),
        "data": _short_hash(repr((described, spec.model_dump() if spec is not None else None))),
    }
    for name in MATH_SETTINGS:
        parts[name] = _describe(settings[name])
    parts.update(data_file_parts(data))
    return parts


def data_file_parts(data: DataSource) -> dict[str, str]:
    """The fingerprint parts of the files ``data`` is read from (none for in-memory data)."""
    paths = (os.path.abspath(path) for path in source_files(data))
    return {DATA_FILE + path: file_fingerprint(path) for path in paths}


def check_data_unchanged(
    data: DataSource, fingerprint: Mapping[str, str], allowed: bool
) -> list[str]:
    """In a worker: the files it reads ``data`` from (a staged copy is not one) are as the
    caller fingerprinted them when the call began. A change between a kill and the restart
    would mix two data sets in one run: raises :class:`~..errors.DataChangedError`, or with
    ``allowed`` (``allow_data_change``) returns what changed, for events.log."""
    now = data_file_parts(data)
    changed = changed_data_files(now, {k: v for k, v in fingerprint.items() if k in now})
    if changed and not allowed:
        raise DataChangedError(changed, "this run's first checkpoint")
    return changed


def changed_data_files(mine: Mapping[str, str], theirs: Mapping[str, str]) -> list[str]:
    """The data files whose contents differ between two fingerprints, each as ``data file
    <path> (<then> -> <now>)``."""
    return [d for d in differences(mine, theirs) if d.startswith(DATA_FILE)]


def differences(
    mine: Mapping[str, str], theirs: Mapping[str, str], *, data_files: bool = True
) -> list[str]:
    """The parts that differ, as ``name (theirs -> mine)``; hashes are named only.
    ``data_files``: whether the data files' contents count (``allow_data_change`` off)."""
    out = []
    for name in sorted(set(mine) | set(theirs)):
        a, b = theirs.get(name), mine.get(name)
        if a is None and (b == repr(None) or name.startswith(DATA_FILE)):
            continue  # newer than their checkpoint: a setting left at its default, a file
        if name.startswith(DATA_FILE) and not data_files:
            continue
        if a != b:
            hashed = name in ("model", "data")
            out.append(f"{name} (different)" if hashed else f"{name} ({a} -> {b})")
    return out


def compatible(
    fingerprint: Mapping[str, str], meta: Mapping[str, Any], *, data_files: bool = True
) -> bool:
    """Whether a checkpoint (its facts, see :func:`~.checkpoint.checkpoint_meta`) may continue
    as a run of ``fingerprint``; checkpoints from before fingerprints are taken as they are.
    ``data_files``: as in :func:`differences`."""
    theirs = meta.get("fingerprint")
    return not theirs or not differences(fingerprint, theirs, data_files=data_files)


def _structure(module: nn.Module) -> str:
    """Names, shapes and dtypes of the model's parameters and buffers."""
    keys, values = structure_keys(module), module.state_dict().values()
    return repr([(k, tuple(v.shape), str(v.dtype)) for k, v in zip(keys, values, strict=True)])


def _describe(value: Any) -> str:
    """A setting as comparable text: functions by their qualified name, not their address."""
    if isinstance(value, dict):
        return repr({k: _describe(v) for k, v in value.items()})
    if callable(value):
        module = getattr(value, "__module__", "")
        return f"{module}.{getattr(value, '__qualname__', type(value).__name__)}"
    return repr(value)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]

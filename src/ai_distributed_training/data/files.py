"""Data files and shard directories.

File formats (targets are the prediction goal):

* ``.npz``: arrays named ``X`` and ``y``.
* ``.pt``: ``torch.save`` of a tuple ``(X, y)`` or a dict with keys ``X`` and ``y``.
* ``.npy`` and ``.csv``: one 2-D numeric table whose LAST column is the target. A ``.csv`` may
  have one header line. A float target column whose values are all integers (>= 0) is read as
  class labels. A ``.npy`` table is read row by row, never loaded whole (:mod:`.streaming`).
* a directory of ``.npy`` or ``.parquet`` shards: one table, read row by row (:mod:`.streaming`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from . import streaming
from .tensors import tensors_source
from .types import DataSource, Task

# --- files ---------------------------------------------------------------------------------------

FILE_SUFFIXES = (".npy", ".npz", ".pt", ".csv")


def file_source(path: str | os.PathLike[str], task: Task | None = None) -> DataSource:
    """Open a data file or shard directory (see the module docstring for the accepted formats)."""
    p = Path(path)
    if p.is_dir():
        return streaming.shard_directory(p, task)
    suffix = p.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise ConfigError(
            f"data file {str(p)!r} has an unsupported suffix {suffix!r}; "
            f"accepted: {', '.join(FILE_SUFFIXES)}"
        )
    if not p.is_file():
        raise ConfigError(f"data file {str(p)!r} does not exist")
    if suffix == ".npz":
        with np.load(p) as z:
            return tensors_source(*_pair(dict(z), p), description=p.name, task=task)
    if suffix == ".pt":
        blob = torch.load(p, weights_only=True)
        if isinstance(blob, Mapping):
            return tensors_source(*_pair(dict(blob), p), description=p.name, task=task)
        if isinstance(blob, (tuple, list)) and len(blob) == 2:
            return tensors_source(blob[0], blob[1], description=p.name, task=task)
        raise ConfigError(f"{p.name} must hold a tuple (X, y) or a dict with keys 'X' and 'y'")
    if suffix == ".npy":
        return streaming.shards_source([str(p)], p.name, task)
    table = _read_csv(p)
    if table.ndim != 2 or table.shape[1] < 2:
        raise ConfigError(
            f"{p.name} must be a 2-D table with the target in its last column; "
            f"got shape {table.shape}"
        )
    return tensors_source(table[:, :-1], table[:, -1], p.name, integral_is_class=True, task=task)


def _pair(arrays: dict[str, Any], p: Path) -> tuple[Any, Any]:
    if "X" not in arrays or "y" not in arrays:
        raise ConfigError(f"{p.name} must contain arrays named 'X' and 'y'; found {sorted(arrays)}")
    return arrays["X"], arrays["y"]


def _read_csv(p: Path) -> np.ndarray[Any, Any]:
    with p.open() as f:
        first = f.readline()
    try:
        [float(v) for v in first.split(",")]
        skip = 0
    except ValueError:
        skip = 1  # a header line
    try:
        return np.loadtxt(p, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
    except ValueError as err:
        raise ConfigError(f"{p.name} is not a numeric CSV table: {err}") from None

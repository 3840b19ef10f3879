"""Data files and shard directories.

File formats (targets are the prediction goal):

* ``.npz``: arrays named ``X`` and ``y``.
* ``.pt``: ``torch.save`` of a tuple ``(X, y)`` or a dict with keys ``X`` and ``y``.
* ``.npy`` and ``.csv``: one 2-D numeric table whose LAST column is the target; a ``.csv``
  may have one header line, and then its target is the column named ``target``, ``label``,
  ``labels``, ``y`` or ``class`` wherever it stands (any other header: say which, setting
  ``target``, by header name or index). A float target column whose values are all integers
  (>= 0) is read as class labels. A ``.npy`` table is read row by row, never loaded whole
  (:mod:`.streaming`).
* a directory of ``.npy`` or ``.parquet`` shards: one table, read row by row (:mod:`.streaming`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from . import streaming
from .tensors import TensorSource, tensors_source
from .types import DataSource, Task

# --- files ---------------------------------------------------------------------------------------

FILE_SUFFIXES = (".npy", ".npz", ".pt", ".csv")


def file_source(
    path: str | os.PathLike[str], task: Task | None = None, target: str | int | None = None
) -> DataSource:
    """Open a data file or shard directory (see the module docstring for the accepted formats);
    ``target``: a ``.csv`` table's target column, by header name or index (default: the last)."""
    p = Path(path)
    if target is not None and p.suffix.lower() != ".csv":
        raise ConfigError(
            f"target={target!r} applies to .csv tables; {p.name} has its target in "
            + ("the array named 'y'" if p.suffix.lower() in (".npz", ".pt") else "its last column")
        )
    if p.is_dir():
        return streaming.shard_directory(p, task)
    source = _file_source(p, task, target)
    return (
        replace(source, files=(str(p.resolve()),)) if isinstance(source, TensorSource) else source
    )


def _file_source(p: Path, task: Task | None, target: str | int | None) -> DataSource:
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
    table, header = _read_csv(p)
    if table.ndim != 2 or table.shape[1] < 2:
        raise ConfigError(
            f"{p.name} must be a 2-D table of features and a target column; got shape {table.shape}"
        )
    column = _target_column(target, header, table.shape[1], p.name)
    named = f" {header[column]!r}" if header else ""
    where = "last column" if column == table.shape[1] - 1 else f"column {column}"
    description = f"{p.name} (target: {where}{named})"
    x, y = np.delete(table, column, axis=1), table[:, column]
    return tensors_source(x, y, description, integral_is_class=True, task=task)


def _target_column(
    target: str | int | None, header: list[str] | None, columns: int, name: str
) -> int:
    """The 0-based index of the target column: by header name or by index (negative counts
    from the end); not given: the column named like a target (:data:`TARGET_NAMES`) wherever it
    stands, the last column of a table without a header, else a ConfigError (no guessing)."""
    if target is None:
        return columns - 1 if header is None else _named_target(header, name)
    if isinstance(target, str):
        if header is None or target not in header:
            found = f"its columns are {header}" if header else "it has no header line"
            raise ConfigError(f"target={target!r} is not a column of {name}: {found}")
        return header.index(target)
    if not -columns <= target < columns:
        raise ConfigError(
            f"target={target} is out of range for {name}'s {columns} columns; use "
            f"0..{columns - 1} (or -{columns}..-1 from the end), or a header name"
        )
    return target % columns


#: Header names (any case) that mark a table's target column when the ``target`` setting is
#: not given.
TARGET_NAMES = ("target", "label", "labels", "y", "class")


def _named_target(header: list[str], name: str) -> int:
    """The one column of ``header`` named like a target; none or several: a ConfigError that
    names the columns and the ``target`` setting."""
    named = [i for i, column in enumerate(header) if column.lower() in TARGET_NAMES]
    if len(named) == 1:
        return named[0]
    found = (
        f"several are named like a target ({', '.join(repr(header[i]) for i in named)})"
        if named
        else f"none is named {'/'.join(TARGET_NAMES)}"
    )
    raise ConfigError(
        f"which column of {name} is the target? Its columns are {header} and {found}; pass "
        f"target=<a column name or 0-based index>, e.g. target={header[-1]!r}"
    )


def _pair(arrays: dict[str, Any], p: Path) -> tuple[Any, Any]:
    if "X" not in arrays or "y" not in arrays:
        raise ConfigError(f"{p.name} must contain arrays named 'X' and 'y'; found {sorted(arrays)}")
    return arrays["X"], arrays["y"]


def _read_csv(p: Path) -> tuple[np.ndarray[Any, Any], list[str] | None]:
    """The table and its header's column names (None without a header line)."""
    with p.open() as f:
        first = f.readline()
    try:
        [float(v) for v in first.split(",")]
        header = None
    except ValueError:
        header = [name.strip().strip('"') for name in first.split(",")]
    try:
        table = np.loadtxt(p, delimiter=",", skiprows=int(header is not None), ndmin=2)
    except ValueError as err:
        raise ConfigError(f"{p.name} is not a numeric CSV table: {err}") from None
    return table.astype(np.float64), header

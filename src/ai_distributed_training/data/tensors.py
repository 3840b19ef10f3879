"""In-memory data from the caller: ``(X, y)`` tensors or arrays, token ids, map-style datasets.

In-memory tensors are staged to a file that every local worker memory-maps, so their pages are
shared through the page cache instead of copied once per worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, ConfigTypeError
from ..host import write_atomically
from .types import (
    DataInfo,
    DatasetReader,
    Task,
    TensorReader,
    dtype_name,
    model_inputs,
    token_info,
)


def tokens_source(tokens: Any, vocab_size: int | None) -> TensorSource:
    """Tokenized text: a 2-D integer array of shape ``(sequences, seq_len + 1)``; position t
    is trained to predict token t + 1."""
    ids = _as_tensor(tokens, "tokens")
    if ids.ndim != 2 or ids.shape[1] < 2 or ids.is_floating_point() or len(ids) == 0:
        raise ConfigError(
            "tokens must be a non-empty 2-D integer array (sequences, seq_len + 1); got "
            f"shape {tuple(ids.shape)}, dtype {ids.dtype}"
        )
    ids = ids.long()
    low, high = int(ids.min()), int(ids.max())
    vocab = vocab_size if vocab_size is not None else high + 1
    if low < 0 or high >= vocab:
        raise ConfigError(f"token ids must be in 0..{vocab - 1} (vocab_size); found {low}..{high}")
    desc = f"tokens: {len(ids)} x {ids.shape[1] - 1}, vocabulary {vocab}"
    info = token_info(len(ids), ids.shape[1] - 1, vocab, desc)
    return TensorSource(ids[:, :-1].contiguous(), ids[:, 1:].contiguous(), info)


# --- tensors and arrays --------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSource:
    """In-memory tensors from the caller. Staged to a file that every local worker memory-maps,
    so the pages are shared through the page cache instead of copied once per worker."""

    x: torch.Tensor
    y: torch.Tensor
    info: DataInfo

    def stage(self, job_dir: Path) -> TensorFileSource:
        job_dir.mkdir(parents=True, exist_ok=True)
        path = job_dir / "data.pt"
        write_atomically({"X": self.x, "y": self.y}, path)  # a full TMPDIR is named as such
        return TensorFileSource(str(path), self.info)

    def open(self) -> TensorReader:
        return TensorReader(self.x, self.y)


@dataclass(frozen=True)
class TensorFileSource:
    """Tensors in a ``torch.save`` file written by :meth:`TensorSource.stage`."""

    path: str
    info: DataInfo

    def stage(self, job_dir: Path) -> TensorFileSource:
        return self

    def open(self) -> TensorReader:
        blob = torch.load(self.path, mmap=True, weights_only=True)
        return TensorReader(blob["X"], blob["y"])


def tensors_source(
    x: Any, y: Any, description: str, integral_is_class: bool = False, task: Task | None = None
) -> TensorSource:
    """Validate ``(X, y)`` and infer the task (or apply ``task`` when given);
    ``integral_is_class`` reads whole-number float targets (from a table file) as class labels."""
    xt, yt = _as_tensor(x, "X"), _as_tensor(y, "y")
    if xt.ndim == 0 or yt.ndim == 0:
        raise ConfigError(
            f"X and y must have a sample dimension; got shapes "
            f"{tuple(xt.shape)} and {tuple(yt.shape)}"
        )
    if len(xt) != len(yt):
        raise ConfigError(f"X and y have different lengths: len(X)={len(xt)}, len(y)={len(yt)}")
    if len(xt) == 0:
        raise ConfigError("the data has 0 samples; at least one is needed")
    xt = model_inputs(xt)
    _check_finite(xt, "X")
    if yt.dtype == torch.bool:
        yt = yt.long()
    if task == "regression":
        yt = yt.float()
    elif task == "classification" and yt.is_floating_point():
        _check_finite(yt, "y")
        if not bool((yt == yt.round()).all()):
            raise ConfigError(
                "task='classification' needs integer class labels, but y has "
                "non-integer values; use task='regression' or integer labels"
            )
        yt = yt.long()
    if yt.is_floating_point():
        _check_finite(yt, "y")
        integral = bool((yt == yt.round()).all()) and yt.min() >= 0
        if integral_is_class and task != "regression" and yt.ndim == 1 and integral:
            yt = yt.long()
    inferred: Task
    if yt.is_floating_point():
        inferred = "regression"
        yt = yt.float()
        outputs = int(np.prod(yt.shape[1:], dtype=np.int64)) if yt.ndim > 1 else 1
    else:
        inferred = "classification"
        if yt.ndim != 1:
            raise ConfigError(
                f"integer targets are class labels and must be 1-D; got y shape "
                f"{tuple(yt.shape)} (use float targets for regression)"
            )
        if int(yt.min()) < 0:
            raise ConfigError(f"class labels must be >= 0; found {int(yt.min())}")
        yt = yt.long()
        outputs = max(2, int(yt.max()) + 1)
    info = DataInfo(
        len(xt),
        tuple(xt.shape[1:]),
        inferred,
        outputs,
        f"{description}: {len(xt)} x {tuple(xt.shape[1:])}, {inferred}",
        input_dtype=dtype_name(xt),
    )
    return TensorSource(xt.contiguous(), yt.contiguous(), info)


def _input_dtype(x0: torch.Tensor) -> str:
    return dtype_name(model_inputs(x0))


def as_float_inputs(x: torch.Tensor) -> torch.Tensor:
    """Model inputs as floats: integers and float64 become float32, narrower floats stay."""
    return x.float() if not x.is_floating_point() or x.dtype == torch.float64 else x


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        numeric = np.issubdtype(value.dtype, np.number) or value.dtype == bool
        if not numeric:
            raise ConfigTypeError(f"{name} must be a numeric array; got dtype {value.dtype}")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise ConfigTypeError(
        f"{name} must be a torch.Tensor or numpy.ndarray; got {type(value).__name__}"
    )


def _check_finite(t: torch.Tensor, name: str) -> None:
    rows = max(1, (64 << 20) // max(1, t[:1].nbytes))  # ~64 MB at a time: no full-size mask
    for start in range(0, len(t), rows):
        bad = ~torch.isfinite(t[start : start + rows])
        if bool(bad.any()):
            where = (bad.reshape(len(bad), -1).any(dim=1).nonzero()[:5, 0] + start).tolist()
            raise ConfigError(
                f"{name} contains NaN or inf values (first rows: {where}); "
                "clean or impute the data first"
            )


#: Labels read to count a Dataset's classes when it has no ``targets`` and no ``num_classes``
#: was given: evenly spread samples, never the whole dataset (5000 slow items took 10.8 s).
CLASS_SAMPLE = 256


def _classes(dataset: Dataset[Any], n: int, num_classes: int | None) -> tuple[int, str]:
    """How many classes a Dataset's labels have, and how that was found."""
    if num_classes is not None:
        return num_classes, "num_classes"
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return max(2, int(torch.as_tensor(targets).max()) + 1), "from its targets"
    spread = torch.linspace(0, n - 1, min(n, CLASS_SAMPLE)).round().long().unique().tolist()
    seen = [int(dataset[i][1]) for i in spread]
    how = "from its labels"
    if len(seen) < n:
        how = f"from {len(seen)} of its labels; set num_classes if some class is rarer"
    return max(2, max(seen) + 1), how


# --- map-style datasets --------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSource:
    """A user ``Dataset`` of ``(input, target)`` pairs, cloudpickled to the workers."""

    dataset: Dataset[Any]
    info: DataInfo

    @classmethod
    def from_dataset(cls, dataset: Dataset[Any], num_classes: int | None = None) -> DatasetSource:
        try:
            n = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigTypeError(
                f"the Dataset {type(dataset).__name__} has no len(); only "
                "map-style datasets (with __len__ and __getitem__) are "
                "accepted"
            ) from None
        if n == 0:
            raise ConfigError(f"the Dataset {type(dataset).__name__} is empty")
        first = dataset[0]
        if not (isinstance(first, Sequence) and len(first) == 2):
            raise ConfigTypeError(
                f"dataset[0] must be an (input, target) pair; got {type(first).__name__}"
            )
        x0, y0 = torch.as_tensor(first[0]), torch.as_tensor(first[1])
        desc = f"{type(dataset).__name__}: {n} samples of shape {tuple(x0.shape)}"
        if y0.is_floating_point():
            task: Task = "regression"
            outputs = max(1, y0.numel())
            desc += ", regression"
        else:
            task = "classification"
            outputs, how = _classes(dataset, n, num_classes)
            desc += f", classification, {outputs} classes ({how})"
        info = DataInfo(n, tuple(x0.shape), task, outputs, desc, input_dtype=_input_dtype(x0))
        return cls(dataset, info)

    def stage(self, job_dir: Path) -> DatasetSource:
        return self

    def open(self) -> DatasetReader:
        return DatasetReader(self.dataset)

"""In-memory data from the caller: ``(X, y)`` tensors or arrays, token ids, map-style datasets.

In-memory tensors are staged to a file that every local worker memory-maps, so their pages are
shared through the page cache instead of copied once per worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, default_collate
from torch.utils.data._utils.collate import default_convert

from ..errors import ConfigError, ConfigTypeError
from ..host import write_atomically
from .loading import DatasetReader, LoaderOptions, collated_example
from .streams import StreamSource
from .structure import (
    IGNORE_INDEX,
    describe_structure,
    is_pair,
    largest_label,
    model_inputs,
    target_of,
)
from .types import DataInfo, Task, TensorReader, dtype_name, task_of, token_info


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
    #: A user DataLoader's batch_size and drop_last, when it held these tensors.
    loader_batch_size: int | None = None
    loader_drop_last: bool = False
    #: The data file these tensors were read from in the caller (see
    #: :func:`~.types.source_files`); the workers read the staged copy.
    files: tuple[str, ...] = ()

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


def _checked_pair(xt: torch.Tensor, yt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` with a sample dimension, the same length, samples, and real values."""
    if xt.ndim == 0 or yt.ndim == 0:
        raise ConfigError(
            f"X and y must have a sample dimension; got shapes "
            f"{tuple(xt.shape)} and {tuple(yt.shape)}"
        )
    if len(xt) != len(yt):
        raise ConfigError(f"X and y have different lengths: len(X)={len(xt)}, len(y)={len(yt)}")
    if len(xt) == 0:
        raise ConfigError("the data has 0 samples; at least one is needed")
    for t, name in ((xt, "X"), (yt, "y")):
        if t.is_complex():  # a model's real weights would drop the imaginary part
            raise ConfigError(
                f"{name} is complex ({t.dtype}): a model of real weights would drop its "
                f"imaginary part; pass torch.view_as_real({name}) (real and imaginary parts as "
                "a last dimension of 2)"
            )
    return xt, yt


def _targets_for(yt: torch.Tensor, task: Task | None, integral_is_class: bool) -> torch.Tensor:
    """The targets as the task reads them: booleans as classes, floats for regression, whole
    numbers as class labels for classification (and, from a table, whole non-negative floats
    of one column)."""
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
    return yt


def tensors_source(
    x: Any, y: Any, description: str, integral_is_class: bool = False, task: Task | None = None
) -> TensorSource:
    """Validate ``(X, y)`` and infer the task (or apply ``task`` when given);
    ``integral_is_class`` reads whole-number float targets (from a table file) as class labels."""
    xt, yt = _checked_pair(_as_tensor(x, "X"), _as_tensor(y, "y"))
    xt = model_inputs(xt)
    _check_finite(xt, "X")
    yt = _targets_for(yt, task, integral_is_class)
    inferred: Task
    if yt.is_floating_point():
        inferred = "regression"
        yt = yt.float()
        outputs = int(np.prod(yt.shape[1:], dtype=np.int64)) if yt.ndim > 1 else 1
    else:
        # Class labels: one per sample (N,), or one per position (N, T, ...) for token-level
        # classification, where -100 marks a position without a target.
        inferred = "classification"
        valid = yt[yt != IGNORE_INDEX] if yt.ndim > 1 else yt
        if valid.numel() and int(valid.min()) < 0:
            ignored = " (-100 marks a position without a target)" if yt.ndim > 1 else ""
            raise ConfigError(f"class labels must be >= 0{ignored}; found {int(valid.min())}")
        yt = yt.long()
        outputs = max(2, largest_label(yt) + 1)
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
    """How many classes a Dataset's labels have (the largest label + 1; -100 means "no
    target"), and how that was found."""
    if num_classes is not None:
        return num_classes, "num_classes"
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return max(2, largest_label(torch.as_tensor(targets)) + 1), "from its targets"
    spread = torch.linspace(0, n - 1, min(n, CLASS_SAMPLE)).round().long().unique().tolist()
    largest = max(largest_label(torch.as_tensor(dataset[i][1])) for i in spread)
    how = "from its labels"
    if len(spread) < n:
        how = f"from {len(spread)} of its labels; set num_classes if some class is rarer"
    return max(2, largest + 1), how


# --- map-style datasets --------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSource:
    """A user ``Dataset`` (samples of any structure), cloudpickled to the workers, read with
    the user's ``collate_fn`` and loader options."""

    dataset: Dataset[Any]
    info: DataInfo
    options: LoaderOptions = field(default_factory=LoaderOptions)
    #: The user's DataLoader's ``batch_size`` and ``drop_last`` (see :func:`loader_source`).
    loader_batch_size: int | None = None
    loader_drop_last: bool = False
    #: The batch of its first two samples it was validated on (the dry run's batch).
    example: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_dataset(
        cls,
        dataset: Dataset[Any],
        num_classes: int | None = None,
        options: LoaderOptions | None = None,
    ) -> DatasetSource:
        """Validate ``dataset`` on a batch of its first two samples, collated as the workers
        will (a collate or shape mistake is a ConfigError here, before any worker starts)."""
        options = options or LoaderOptions()
        n = _dataset_len(dataset)
        example = example_of(dataset, options)
        name = type(dataset).__name__
        if not is_pair(example):
            desc = f"{name}: {n} samples, batches of {describe_structure(example)}"
            task = task_of(target_of(example))
            info = DataInfo(n, (), task, num_classes or 0, desc, structured=True)
            return cls(dataset, info, options, example=example)
        x0, y0 = example
        desc = f"{name}: {n} samples of shape {tuple(x0.shape[1:])}"
        task = task_of(y0)
        if task == "regression":
            outputs = max(1, y0[0].numel())
            desc += ", regression"
        else:
            outputs, how = _classes(dataset, n, num_classes)
            desc += f", classification, {outputs} classes ({how})"
        info = DataInfo(
            n, tuple(x0.shape[1:]), task, outputs, desc, input_dtype=_input_dtype(x0[0])
        )
        return cls(dataset, info, options, example=example)

    def stage(self, job_dir: Path) -> DatasetSource:
        return self

    def open(self) -> DatasetReader:
        return DatasetReader(self.dataset, self.options)


def sliceable(dataset: Any, collate_fn: Callable[..., Any] | None, num_classes: int | None) -> bool:
    """Whether batches of ``dataset`` are slices of two tensors: a ``TensorDataset`` of
    ``(X, y)`` collated by torch's default (which stacks the very rows a slice holds), with no
    class count to state. Those are read as tensors, sliced a batch at a time, not fetched and
    collated sample by sample (measured 0.67x the sliced path's samples/s at nodes=2)."""
    return (
        isinstance(dataset, TensorDataset)
        and len(dataset.tensors) == 2
        and collate_fn is None
        and num_classes is None
    )


def loader_source(
    loader: DataLoader[Any], num_classes: int | None, collate_fn: Callable[..., Any] | None
) -> DatasetSource | StreamSource | TensorSource:
    """A user's ``DataLoader``: its dataset, ``collate_fn`` (unless the ``collate_fn`` setting
    replaces it), ``num_workers``, ``pin_memory``, ``prefetch_factor`` and ``worker_init_fn``
    (loader processes always persist: see ``DatasetReader.start_loader_processes``). Its
    sampler is replaced by the global-batch sampler (every sample once per epoch across
    ranks); its ``batch_size`` is checked against the global batch by the caller."""
    own = loader.collate_fn if loader.collate_fn not in (default_collate, default_convert) else None
    options = LoaderOptions(
        collate_fn=collate_fn or own,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        prefetch_factor=loader.prefetch_factor if loader.num_workers else None,
        worker_init_fn=loader.worker_init_fn,
    )
    if isinstance(loader.dataset, IterableDataset):
        stream = StreamSource.from_stream(loader.dataset, options, num_classes)
        return replace(stream, loader_batch_size=loader.batch_size)
    if sliceable(loader.dataset, options.collate_fn, num_classes):
        x, y = loader.dataset.tensors  # type: ignore[attr-defined]
        how = f"a DataLoader's TensorDataset, sliced (num_workers={loader.num_workers} unused)"
        tensors = tensors_source(x, y, description=how)
        return replace(
            tensors, loader_batch_size=loader.batch_size, loader_drop_last=loader.drop_last
        )
    source = DatasetSource.from_dataset(loader.dataset, num_classes, options)
    sampler = type(loader.sampler).__name__
    shown = "its batches" if loader.batch_size is None else f"its {sampler}"
    description = (
        f"{source.info.description}; from a DataLoader (num_workers={loader.num_workers}), "
        f"{shown} replaced by the global-batch sampler"
    )
    info = replace(source.info, description=description)
    return replace(
        source, info=info, loader_batch_size=loader.batch_size, loader_drop_last=loader.drop_last
    )


def example_of(dataset: Dataset[Any], options: LoaderOptions) -> Any:
    """The dataset's first two samples collated as the workers will (one if it has one)."""
    n = _dataset_len(dataset)
    items = [dataset[0], dataset[min(1, n - 1)]]
    return collated_example(items, options, type(dataset).__name__)


def _dataset_len(dataset: Dataset[Any]) -> int:
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigTypeError(
            f"the Dataset {type(dataset).__name__} has no len(); only map-style datasets "
            "(with __len__ and __getitem__) are accepted"
        ) from None
    if n == 0:
        raise ConfigError(f"the Dataset {type(dataset).__name__} is empty")
    return n

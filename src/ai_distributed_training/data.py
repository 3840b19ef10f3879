"""Data inputs -> validated data sources the workers open.

The caller turns whatever the user passed (a synthetic spec, ``(X, y)`` tensors or arrays, a
``Dataset``, a file path) into a :class:`DataSource`: a small picklable description that knows the
data's shape and task (:class:`DataInfo`) and opens into a :class:`BatchReader` inside each worker.
All checks run in the caller, before any worker starts.

File formats (targets are the prediction goal):

* ``.npz``: arrays named ``X`` and ``y``.
* ``.pt``: ``torch.save`` of a tuple ``(X, y)`` or a dict with keys ``X`` and ``y``.
* ``.npy`` and ``.csv``: one 2-D numeric table whose LAST column is the target. A ``.csv`` may
  have one header line. A float target column whose values are all integers (>= 0) is read as
  class labels. A ``.npy`` table is memory-mapped, never loaded whole (see ``streaming.py``).
* a directory of ``.npy`` or ``.parquet`` shards: one table, memory-mapped (``streaming.py``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from .config import SyntheticDataSpec, TokenDataSpec, validate
from .errors import ConfigError, ConfigTypeError

Task = Literal["classification", "regression"]
TEACHER_WIDTH = 32  # hidden width of the random teacher that labels synthetic data


@dataclass(frozen=True)
class DataInfo:
    """What the caller knows about the data without loading it in every worker."""

    samples: int
    input_shape: tuple[int, ...]
    task: Task
    #: Classes for classification (the vocabulary for tokens); target values for regression.
    num_outputs: int
    description: str
    #: Token sequences: inputs are ids, each position's target is the next token's id.
    tokens: bool = False


def example_batch(
    info: DataInfo, batch: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of zeros shaped and typed like the data's (for counting and timing models)."""
    if info.tokens:
        ids = torch.zeros((batch, *info.input_shape), dtype=torch.long, device=device)
        return ids, ids.clone()
    x = torch.zeros((batch, *info.input_shape), device=device)
    if info.task == "classification":
        return x, torch.zeros(batch, dtype=torch.long, device=device)
    return x, torch.zeros(batch, info.num_outputs, device=device).squeeze(1)


class BatchReader(Protocol):
    """Data opened inside a worker: fetches the samples at given indices as one batch."""

    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class DataSource(Protocol):
    """A picklable description of the data, built in the caller and opened in each worker."""

    @property
    def info(self) -> DataInfo: ...

    def stage(self, job_dir: Path) -> DataSource:
        """Prepare to travel to the workers (e.g. write tensors to a file they memory-map)."""
        ...

    def open(self) -> BatchReader: ...


class TensorReader:
    """Batches sliced straight from two tensors (no per-sample Python indexing)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[indices], self.y[indices]


class DatasetReader:
    """Batches from a map-style ``Dataset`` of ``(input, target)`` pairs."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(indices) == 0:  # an empty share: a zero-row batch of the right shapes
            x, y = self.batch(torch.zeros(1, dtype=torch.long))
            return x[:0], y[:0]
        idx = indices.tolist()
        getitems = getattr(self.dataset, "__getitems__", None)
        items = getitems(idx) if getitems else [self.dataset[i] for i in idx]
        x, y = default_collate(items)
        return torch.as_tensor(x), torch.as_tensor(y)


# --- synthetic data ------------------------------------------------------------------------------


def make_synthetic(spec: SyntheticDataSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic dataset labelled by a fixed random teacher (a one-hidden-layer tanh net).

    The teacher runs in float64 so that labels do not depend on thread count or BLAS order.
    """
    g = torch.Generator().manual_seed(spec.seed)
    x = torch.randn(spec.samples, spec.features, generator=g)
    outputs = spec.classes if spec.task == "classification" else 1
    w1 = torch.randn(spec.features, TEACHER_WIDTH, generator=g, dtype=torch.float64)
    w2 = torch.randn(TEACHER_WIDTH, outputs, generator=g, dtype=torch.float64)
    teacher = torch.tanh(x.double() @ w1 / math.sqrt(spec.features)) @ w2
    if spec.task == "classification":
        return x, teacher.argmax(dim=1)
    y = teacher[:, 0] / teacher[:, 0].std()
    noise = 0.1 * torch.randn(spec.samples, generator=g, dtype=torch.float64)
    return x, (y + noise).float()


@dataclass(frozen=True)
class SyntheticSource:
    """Synthetic data: each worker regenerates it from the spec (cheap, nothing to ship)."""

    spec: SyntheticDataSpec
    info: DataInfo

    @classmethod
    def from_spec(cls, spec: SyntheticDataSpec) -> SyntheticSource:
        outputs = spec.classes if spec.task == "classification" else 1
        desc = f"synthetic {spec.task}: {spec.samples} x {spec.features}"
        info = DataInfo(spec.samples, (spec.features,), spec.task, outputs, desc)
        return cls(spec, info)

    def stage(self, job_dir: Path) -> SyntheticSource:
        return self

    def open(self) -> TensorReader:
        return TensorReader(*make_synthetic(self.spec))


# --- token sequences -----------------------------------------------------------------------------


def make_tokens(spec: TokenDataSpec) -> torch.Tensor:
    """``samples`` sequences of ``seq_len + 1`` token ids from a fixed random bigram chain with
    peaked transitions: learnable (a model that learns the chain beats log(vocab_size))."""
    g = torch.Generator().manual_seed(spec.seed)
    transitions = torch.softmax(3.0 * torch.randn(spec.vocab_size, spec.vocab_size, generator=g), 1)
    ids = torch.empty(spec.samples, spec.seq_len + 1, dtype=torch.long)
    ids[:, 0] = torch.randint(spec.vocab_size, (spec.samples,), generator=g)
    for t in range(spec.seq_len):
        ids[:, t + 1] = torch.multinomial(transitions[ids[:, t]], 1, generator=g)[:, 0]
    return ids


def token_info(samples: int, seq_len: int, vocab_size: int, description: str) -> DataInfo:
    return DataInfo(samples, (seq_len,), "classification", vocab_size, description, tokens=True)


@dataclass(frozen=True)
class SyntheticTokenSource:
    """Synthetic token sequences: each worker regenerates them from the spec."""

    spec: TokenDataSpec
    info: DataInfo

    @classmethod
    def from_spec(cls, spec: TokenDataSpec) -> SyntheticTokenSource:
        desc = f"synthetic tokens: {spec.samples} x {spec.seq_len}, vocabulary {spec.vocab_size}"
        return cls(spec, token_info(spec.samples, spec.seq_len, spec.vocab_size, desc))

    def stage(self, job_dir: Path) -> SyntheticTokenSource:
        return self

    def open(self) -> TensorReader:
        ids = make_tokens(self.spec)
        return TensorReader(ids[:, :-1], ids[:, 1:])


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
        torch.save({"X": self.x, "y": self.y}, path)
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
    xt = as_float_inputs(xt)
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
    )
    return TensorSource(xt.contiguous(), yt.contiguous(), info)


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


# --- map-style datasets --------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSource:
    """A user ``Dataset`` of ``(input, target)`` pairs, cloudpickled to the workers."""

    dataset: Dataset[Any]
    info: DataInfo

    @classmethod
    def from_dataset(cls, dataset: Dataset[Any]) -> DatasetSource:
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
        if y0.is_floating_point():
            task: Task = "regression"
            outputs = max(1, y0.numel())
        else:
            task = "classification"
            targets = getattr(dataset, "targets", None)
            labels = (
                torch.as_tensor(targets)
                if targets is not None
                else torch.as_tensor([int(dataset[i][1]) for i in range(n)])
            )
            outputs = max(2, int(labels.max()) + 1)
        desc = f"{type(dataset).__name__}: {n} samples of shape {tuple(x0.shape)}, {task}"
        return cls(dataset, DataInfo(n, tuple(x0.shape), task, outputs, desc))

    def stage(self, job_dir: Path) -> DatasetSource:
        return self

    def open(self) -> DatasetReader:
        return DatasetReader(self.dataset)


# --- files ---------------------------------------------------------------------------------------

FILE_SUFFIXES = (".npy", ".npz", ".pt", ".csv")


def file_source(path: str | os.PathLike[str], task: Task | None = None) -> DataSource:
    """Open a data file or shard directory (see the module docstring for the accepted formats)."""
    from . import streaming  # it builds on this module's types

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


# --- entry point ---------------------------------------------------------------------------------


def resolve_data(data: Any, task: Task | None = None) -> DataSource:
    """Turn any accepted data input into a validated :class:`DataSource`.

    Accepted: a synthetic spec dict ``{"samples", "features", "classes", "task", "seed"}``,
    a pair ``(X, y)`` of tensors or NumPy arrays, a map-style ``torch.utils.data.Dataset`` of
    ``(input, target)`` pairs, a path to a ``.npy``/``.npz``/``.pt``/``.csv`` file, or a path to
    a directory of ``.npy`` or ``.parquet`` shards.

    ``task`` ("classification" or "regression") overrides the task inferred from the targets.

    Raises:
        ConfigError: a bad value (naming it); ConfigTypeError: an input of a type not accepted.
    """
    if isinstance(data, (str, os.PathLike)):
        return file_source(data, task)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return tensors_source(data[0], data[1], description="arrays", task=task)
    source: DataSource
    if isinstance(data, Mapping) and "tokens" in data:
        extra = sorted(set(data) - {"tokens", "vocab_size"})
        if extra:
            raise ConfigError(f"unknown key(s) {extra} beside 'tokens'; accepted: 'vocab_size'")
        source = tokens_source(data["tokens"], data.get("vocab_size"))
    elif isinstance(data, Mapping) and {"seq_len", "vocab_size"} & set(data):
        source = SyntheticTokenSource.from_spec(validate(TokenDataSpec, data, "data key"))
    elif isinstance(data, Mapping):
        source = SyntheticSource.from_spec(validate(SyntheticDataSpec, data, "data key"))
    elif isinstance(data, Dataset):
        source = DatasetSource.from_dataset(data)
    else:
        raise ConfigTypeError(
            f"data of type {type(data).__name__} is not accepted; pass a synthetic spec dict "
            "{'samples': N, 'features': F}, a pair (X, y) of tensors or arrays, a map-style "
            f"torch Dataset, or a path to a {'/'.join(FILE_SUFFIXES)} file or a directory of "
            ".npy/.parquet shards"
        )
    # A spec or a dataset states its own targets: a different task setting is a contradiction.
    if task is not None and task != source.info.task:
        raise ConfigError(
            f"task={task!r} conflicts with the data, whose task is "
            f"{source.info.task!r} (set the task in the data spec or dataset)"
        )
    return source

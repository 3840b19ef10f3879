"""The data layer's types: what the caller knows of the data, and what a worker reads from it.

The caller turns whatever the user passed (a synthetic spec, ``(X, y)`` tensors or arrays, a
``Dataset``, a file path) into a :class:`DataSource`: a small picklable description that knows the
data's shape and task (:class:`DataInfo`) and opens into a :class:`BatchReader` inside each worker.
All checks run in the caller, before any worker starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from .structure import model_inputs

__all__ = ["model_inputs"]  # re-exported: the readers' dtype rule

#: "custom": the model's own loss or the ``loss_fn`` setting defines what is learned.
Task = Literal["classification", "regression", "custom"]


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
    #: The inputs' dtype (torch's name): integer inputs (ids for an embedding) stay integers.
    input_dtype: str = "float32"
    #: Batches are not ``(inputs, targets)`` tensor pairs (dicts, several inputs, nesting):
    #: only the user's own models take them.
    structured: bool = False
    #: A stream (IterableDataset): read in order, ``samples`` its length if it has one, else 0.
    stream: bool = False


def source_files(source: Any) -> tuple[str, ...]:
    """The files a data source reads its samples from in the workers or took them from in the
    caller (a ``files`` attribute); none for in-memory or generated data."""
    return tuple(getattr(source, "files", ()))


def example_batch(
    info: DataInfo, batch: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of zeros shaped and typed like the data's (for counting and timing models)."""
    if info.tokens:
        ids = torch.zeros((batch, *info.input_shape), dtype=torch.long, device=device)
        return ids, ids.clone()
    x = torch.zeros(
        (batch, *info.input_shape), dtype=getattr(torch, info.input_dtype), device=device
    )
    if info.task == "classification":
        return x, torch.zeros(batch, dtype=torch.long, device=device)
    return x, torch.zeros(batch, info.num_outputs, device=device).squeeze(1)


class BatchReader(Protocol):
    """Data opened inside a worker: fetches the samples at given indices as one batch."""

    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor) -> Any:
        """The samples at ``indices`` as one batch: an ``(inputs, targets)`` pair of tensors,
        or any structure of tensors (see :mod:`.structure`)."""
        ...


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


def task_of(target: Any) -> Task:
    """The task a batch's target implies: integer labels classify, floats regress; no target
    tensor: the model's own loss or a loss_fn decides ("custom")."""
    if not isinstance(target, torch.Tensor):
        return "custom"
    return "regression" if target.is_floating_point() else "classification"


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def token_info(samples: int, seq_len: int, vocab_size: int, description: str) -> DataInfo:
    return DataInfo(samples, (seq_len,), "classification", vocab_size, description, tokens=True)

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
from torch.utils.data import Dataset, default_collate

Task = Literal["classification", "regression"]


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
        return model_inputs(torch.as_tensor(x)), torch.as_tensor(y)


def model_inputs(x: torch.Tensor) -> torch.Tensor:
    """Inputs as a model takes them: float64 and bool become float32 (the weights' dtype);
    narrower floats stay; integers (ids for an embedding) stay integers."""
    if x.dtype == torch.float64 or x.dtype == torch.bool:
        return x.float()
    return x


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def token_info(samples: int, seq_len: int, vocab_size: int, description: str) -> DataInfo:
    return DataInfo(samples, (seq_len,), "classification", vocab_size, description, tokens=True)

"""Streams of samples (``IterableDataset``): read in order, one pass an epoch.

Two ways a stream reaches the ranks:

* **Sharded**: the dataset has ``shard(rank, world_size)`` returning this rank's own stream.
  Each step every rank takes its share of the global batch from its shard; the ranks then sum
  what they got (one scalar all-reduce), so they agree whether a full, a partial or no global
  batch exists, and all stop together at the end (no hang when shards differ in length).
* **Global**: any other stream. Every rank reads the whole stream and trains on its slice of
  each global batch: simple and exact, at the cost of every rank reading everything.

A stream with ``state_dict()``/``load_state_dict()`` (torchdata's Stateful protocol) is resumed
at the exact sample after a restart: its state after each checkpointed step is saved per rank.
Any other stream is read again from its beginning on a resume and the global batches already
trained are read and skipped: exact for a deterministic stream, at the cost of reading them.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, default_collate

from ..errors import ConfigError
from .loading import LoaderOptions
from .structure import batch_inputs, describe_structure, num_samples, target_of
from .types import DataInfo, Task


def is_stateful(dataset: Any) -> bool:
    return callable(getattr(dataset, "state_dict", None)) and callable(
        getattr(dataset, "load_state_dict", None)
    )


@dataclass(frozen=True)
class StreamSource:
    """A user ``IterableDataset``, cloudpickled to the workers."""

    dataset: IterableDataset[Any]
    info: DataInfo
    options: LoaderOptions = field(default_factory=LoaderOptions)
    #: A user DataLoader's ``batch_size`` and ``drop_last`` (see ``tensors.loader_source``).
    loader_batch_size: int | None = None
    loader_drop_last: bool = False

    @property
    def sharded(self) -> bool:
        return callable(getattr(self.dataset, "shard", None))

    @property
    def stateful(self) -> bool:
        return is_stateful(self.dataset)

    @classmethod
    def from_stream(cls, dataset: IterableDataset[Any], options: LoaderOptions) -> StreamSource:
        """Validate on a batch of the stream's first two samples (read from a copy, so the
        stream the workers get is untouched)."""
        if options.num_workers:
            raise ConfigError(
                f"num_workers={options.num_workers}: a stream is read in each training process "
                "(its position is checkpointed there); use num_workers=0 for an IterableDataset"
            )
        name = type(dataset).__name__
        source = cls(dataset, DataInfo(0, (), "custom", 0, ""), options)
        example = source.example()
        length = getattr(dataset, "__len__", None)
        samples = int(length()) if callable(length) else 0
        how = (
            "sharded by its shard(rank, world_size)"
            if source.sharded
            else "read whole by every rank"
        )
        resume = (
            "resumed from its state_dict" if source.stateful else "re-read and skipped on resume"
        )
        desc = (
            f"{name}: a stream ({samples or 'unknown'} samples), {how}, {resume}; batches of "
            f"{describe_structure(example)}"
        )
        target = target_of(example)
        task: Task = "custom"
        if isinstance(target, torch.Tensor):
            task = "regression" if target.is_floating_point() else "classification"
        info = DataInfo(samples, (), task, 0, desc, structured=True, stream=True)
        return cls(dataset, info, options)

    def example(self) -> Any:
        """A batch of the stream's first two samples, read from a copy of the stream (the one
        the workers get is untouched), collated as the workers will."""
        name = type(self.dataset).__name__
        items = list(itertools.islice(iter(copy.deepcopy(self.dataset)), 2))
        if not items:
            raise ConfigError(f"the stream {name} yields no sample")
        collate = self.options.collate_fn or default_collate
        try:
            example = batch_inputs(collate(items))
            num_samples(example)
        except Exception as err:
            raise ConfigError(
                f"a batch of the stream {name}: {type(err).__name__}: {err}"
            ) from None
        return example

    def stage(self, job_dir: Path) -> StreamSource:
        return self

    def open(self) -> StreamReader:
        return StreamReader(self.dataset, self.options.collate_fn or default_collate)


class StreamReader:
    """A rank's view of a stream: takes samples in order, collates them, keeps its state."""

    def __init__(self, dataset: IterableDataset[Any], collate: Callable[[list[Any]], Any]) -> None:
        self.dataset, self.collate = dataset, collate
        self.sharded = callable(getattr(dataset, "shard", None))
        self.stateful = is_stateful(dataset)
        self.rank_stream: Any = dataset
        self.iterator: Iterator[Any] | None = None
        self.stand_in: Any = None  # a sample to run when this rank's share is empty
        length = getattr(dataset, "__len__", None)
        #: The stream's samples in one pass, if it says (0: unknown).
        self.length = int(length()) if callable(length) else 0

    def __len__(self) -> int:
        return 0  # no index positions: the loop reads it as a stream

    def batch(self, indices: torch.Tensor) -> Any:
        raise TypeError("a stream is read in order (see StreamReader.take), not by index")

    def open_for(self, rank: int, world_size: int) -> None:
        """This rank's stream: its shard, or the whole stream."""
        self.rank_stream = self.dataset.shard(rank, world_size) if self.sharded else self.dataset  # type: ignore[attr-defined]

    def start(self, state: Any = None) -> None:
        """A pass from the beginning, or from ``state`` (a ``state_dict()`` of this stream)."""
        if state is not None:
            self.rank_stream.load_state_dict(state)
        self.iterator = iter(self.rank_stream)

    def take(self, n: int) -> list[Any]:
        """Up to ``n`` next samples (fewer at the end of the stream)."""
        assert self.iterator is not None, "start() first"
        items = list(itertools.islice(self.iterator, n))
        if items and self.stand_in is None:
            self.stand_in = items[0]
        return items

    def stand_in_sample(self) -> Any:
        """A sample for an empty share: the first this rank read, else the stream's first."""
        if self.stand_in is None:
            self.stand_in = next(iter(copy.deepcopy(self.dataset)))
        return self.stand_in

    def collated(self, items: list[Any]) -> Any:
        return batch_inputs(self.collate(items))

    def state_dict(self) -> Any:
        return self.rank_stream.state_dict() if self.stateful else None

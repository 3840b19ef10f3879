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

import contextlib
import copy
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, default_collate
from torch.utils.data._utils import worker as loader_worker
from torch.utils.data._utils.worker import WorkerInfo

from ..errors import ConfigError
from .loading import LoaderOptions, collated_example
from .structure import (
    batch_inputs,
    describe_structure,
    is_pair,
    largest_label,
    target_of,
)
from .types import DataInfo, task_of

#: Labels read (from a copy of the stream) to count its classes when num_classes is not given.
CLASS_SAMPLE = 256

#: How each split mode reads, as the data's description says it.
HOW = {
    "shard": "sharded by its shard(rank, world_size)",
    "worker_info": "split by the stream itself (get_worker_info(): rank as worker id)",
    "global": "read whole by every rank",
}


def split_mode(dataset: Any, sharding: str) -> str:
    """``"shard"`` (the stream's ``shard(rank, world_size)``), ``"worker_info"`` (the stream
    splits itself by ``torch.utils.data.get_worker_info()``, each rank presented as worker
    ``rank`` of ``world_size``) or ``"global"``; ``"auto"``: shard if it can, else global."""
    if sharding == "auto":
        return "shard" if callable(getattr(dataset, "shard", None)) else "global"
    if sharding == "shard" and not callable(getattr(dataset, "shard", None)):
        raise ConfigError(
            f"stream_sharding='shard' but the stream {type(dataset).__name__} has no "
            "shard(rank, world_size); use 'worker_info' (it splits itself by "
            "get_worker_info()) or 'global'"
        )
    return sharding


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
    #: How the ranks split it (the ``stream_sharding`` setting, see :func:`split_mode`).
    sharding: str = "auto"
    #: The batch of its first two samples it was validated on (the dry run's batch).
    example: Any = field(default=None, repr=False, compare=False)

    @property
    def mode(self) -> str:
        return split_mode(self.dataset, self.sharding)

    @property
    def stateful(self) -> bool:
        return is_stateful(self.dataset)

    @classmethod
    def from_stream(
        cls,
        dataset: IterableDataset[Any],
        options: LoaderOptions,
        num_classes: int | None = None,
    ) -> StreamSource:
        """Validate on a batch of the stream's first two samples, read from a copy (the
        stream the workers get is untouched); the copy reads on for the classes of a stream of
        ``(input, label)`` pairs when ``num_classes`` is not given."""
        if options.num_workers:
            raise ConfigError(
                f"num_workers={options.num_workers}: a stream is read in each training process "
                "(its position is checkpointed there); use num_workers=0 for an IterableDataset"
            )
        name = type(dataset).__name__
        copied = iter(copy.deepcopy(dataset))
        head = list(itertools.islice(copied, 2))
        if not head:
            raise ConfigError(f"the stream {name} yields no sample")
        example = collated_example(head, options, f"stream {name}")
        task = task_of(target_of(example))
        info = DataInfo(_length(dataset), (), task, 0, "", stream=True)
        if is_pair(example):  # (inputs, targets): the built-in models and the planner take it
            x, y = example
            outputs = y[0].numel() if task == "regression" else num_classes
            if outputs is None:  # the largest of the first CLASS_SAMPLE labels + 1
                labels = [item[1] for item in [*head, *itertools.islice(copied, CLASS_SAMPLE - 2)]]
                outputs = max(2, max(largest_label(torch.as_tensor(t)) for t in labels) + 1)
            shape, dtype = tuple(x.shape[1:]), str(x.dtype).removeprefix("torch.")
            info = replace(info, input_shape=shape, num_outputs=max(1, outputs), input_dtype=dtype)
        else:
            info = replace(info, structured=True)
        return cls(dataset, info, options, example=example).split_by("auto")

    def split_by(self, sharding: str) -> StreamSource:
        """This stream split as ``sharding`` says (see :func:`split_mode`), described so."""
        name, samples = type(self.dataset).__name__, self.info.samples
        resume = "resumed from its state_dict" if self.stateful else "re-read and skipped on resume"
        description = (
            f"{name}: a stream ({samples or 'unknown'} samples), "
            f"{HOW[split_mode(self.dataset, sharding)]}, {resume}; batches of "
            f"{describe_structure(self.example)}"
        )
        return replace(self, info=replace(self.info, description=description), sharding=sharding)

    def stage(self, job_dir: Path) -> StreamSource:
        return self

    def open(self) -> StreamReader:
        collate = self.options.collate_fn or default_collate
        return StreamReader(self.dataset, collate, self.mode)


class StreamReader:
    """A rank's view of a stream: takes samples in order, collates them, keeps its state."""

    def __init__(
        self, dataset: IterableDataset[Any], collate: Callable[[list[Any]], Any], mode: str
    ) -> None:
        self.dataset, self.collate, self.mode = dataset, collate, mode
        #: Each rank reads its own part (else every rank reads all and keeps its slice).
        self.sharded = mode != "global"
        self.worker: WorkerInfo | None = None
        self.stateful = is_stateful(dataset)
        self.rank_stream: Any = dataset
        self.iterator: Iterator[Any] | None = None
        self.stand_in: Any = None  # a sample to run when this rank's share is empty
        #: The stream's samples in one pass, if it says (0: unknown).
        self.length = _length(dataset)

    def __len__(self) -> int:
        return 0  # no index positions: the loop reads it as a stream

    def batch(self, indices: torch.Tensor) -> Any:
        raise TypeError("a stream is read in order (see StreamReader.take), not by index")

    def open_for(self, rank: int, world_size: int) -> None:
        """This rank's stream: its shard, or the whole stream."""
        if self.mode == "shard":
            self.rank_stream = self.dataset.shard(rank, world_size)  # type: ignore[attr-defined]
        if self.mode == "worker_info":
            self.worker = WorkerInfo(id=rank, num_workers=world_size, seed=0, dataset=self.dataset)

    def start(self, state: Any = None) -> None:
        """A pass from the beginning, or from ``state`` (a ``state_dict()`` of this stream)."""
        if state is not None:
            self.rank_stream.load_state_dict(state)
        self.iterator = iter(self.rank_stream)

    def take(self, n: int) -> list[Any]:
        """Up to ``n`` next samples (fewer at the end of the stream)."""
        assert self.iterator is not None, "start() first"
        with _as_loader_worker(self.worker):
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


@contextlib.contextmanager
def _as_loader_worker(worker: WorkerInfo | None) -> Iterator[None]:
    """While reading: ``torch.utils.data.get_worker_info()`` says ``worker`` (this rank as a
    loader worker), so a stream written to split itself among loader workers splits by rank."""
    if worker is None:
        yield
        return
    saved = loader_worker._worker_info
    loader_worker._worker_info = worker
    try:
        yield
    finally:
        loader_worker._worker_info = saved


def _length(dataset: Any) -> int:
    """A stream's ``len()``, or 0 when it has none (none defined, or one that raises
    TypeError, as wrappers of generators do)."""
    try:
        return len(dataset)
    except TypeError:
        return 0

"""Reading a map-style ``Dataset`` in a worker: the user's ``collate_fn``, optional background
loader processes (``num_workers``), and random augmentation that repeats exactly.

Each sample is fetched with torch's, Python's and NumPy's global generators seeded from
``(seed, epoch, index)``, in the training process (its own generator state saved and restored
around the fetch) or in a loader process alike. So a ``__getitem__`` that augments with random
numbers gives sample ``i`` of epoch ``e`` the same augmentation whatever the number of ranks,
whatever ``num_workers``, and after a resume mid-epoch; and reading data never shifts the
training process's own random stream (dropout). torch's ``DataLoader`` seeds per loader process
instead, so the same sample gets another augmentation when the work is split differently.
A Dataset with ``__getitems__`` (a batched read) is called once per batch, seeded per batch: its
augmentation then depends on how samples are grouped into batches. A Dataset that never draws
from Python's or NumPy's generator does not pay for seeding them (see :class:`SeededDataset`).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..errors import ConfigError
from .structure import batch_inputs, first_rows, num_samples

_MASK = (1 << 63) - 1


@dataclass(frozen=True)
class LoaderOptions:
    """How a rank loads a Dataset's batches (from the user's ``DataLoader``, if they passed one)."""

    collate_fn: Callable[[list[Any]], Any] | None = None
    num_workers: int = 0
    pin_memory: bool = False
    prefetch_factor: int | None = None
    worker_init_fn: Callable[[int], None] | None = None


@dataclass(frozen=True)
class Micro:
    """One micro-batch as read: ``samples`` 0 marks a stand-in for an empty share (one real
    sample, so every model runs and DDP reduces every gradient; its loss is weighted 0)."""

    batch: Any
    samples: int


class Plan:
    """The index lists a rank reads next, in order; a ``DataLoader`` batch sampler whose
    contents change each epoch (so persistent loader processes live across epochs)."""

    def __init__(self) -> None:
        self.lists: list[SeededIndices] = []

    def __iter__(self) -> Iterator[SeededIndices]:
        return iter(self.lists)

    def __len__(self) -> int:
        return len(self.lists)


class SeededIndices(list):  # type: ignore[type-arg]
    """Sample indices with the seed their augmentation draws from (pickles to loader processes)."""

    def __init__(self, indices: Iterable[int], key: int) -> None:
        super().__init__(indices)
        self.key = key


def sample_seed(key: int, index: int) -> int:
    """A seed per ``(key, index)``: splitmix64 of their combination (fast, well mixed)."""
    z = (key * 0x9E3779B97F4A7C15 + index + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & _MASK


class SeededDataset(Dataset[Any]):
    """The user's Dataset, each sample fetched under its own seed (see the module docstring).

    Seeding Python's and NumPy's generators costs ~5.5 us a sample, more than a cheap
    ``__getitem__`` itself (a 512-sample batch of dict rows: 3.5 ms of 4.9 ms with torch's).
    So torch's generator is seeded per sample always (~1 us; ``torch.initial_seed()`` is the
    sample's seed too), and the other two only once a batch is seen drawing from them: until
    then a batch is read with theirs unseeded and kept if neither moved (a sample that draws
    nothing from them is the same under any seed); the first batch that moved one is read
    again, each sample under its seed, as is every batch after it (``draws_random``)."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset
        self.draws_random = False

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitems__(self, indices: SeededIndices) -> list[Any]:
        batched = getattr(self.dataset, "__getitems__", None)
        if batched is not None:  # the user's batched read: one seed for the batch
            _seed_everything(sample_seed(indices.key, -1 - indices[0]))
            return list(batched(list(indices)))
        if not self.draws_random:
            before = _python_and_numpy_states()
            items = self._fetch(indices, torch.default_generator.manual_seed)
            if _same_states(before, _python_and_numpy_states()):
                return items
            self.draws_random = True
        return self._fetch(indices, _seed_everything)

    def _fetch(self, indices: SeededIndices, seed: Callable[[int], object]) -> list[Any]:
        items = []
        for i in indices:
            seed(sample_seed(indices.key, i))
            items.append(self.dataset[i])
        return items


def _python_and_numpy_states() -> tuple[Any, Any]:
    """Python's and NumPy's global generator states (~37 us together)."""
    return random.getstate(), np.random.get_state()


def _same_states(a: tuple[Any, Any], b: tuple[Any, Any]) -> bool:
    """Whether no number was drawn between two :func:`_python_and_numpy_states`."""
    (name_a, keys_a, *rest_a), (name_b, keys_b, *rest_b) = a[1], b[1]
    return a[0] == b[0] and (name_a, rest_a) == (name_b, rest_b) and np.array_equal(keys_a, keys_b)


def _seed_everything(seed: int) -> None:
    """torch's, Python's and NumPy's global generators (what augmentation code draws from)."""
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)


class DatasetReader:
    """Batches from a map-style ``Dataset``: collated by the user's ``collate_fn`` (default
    ``default_collate``), in this process or in ``num_workers`` loader processes."""

    def __init__(self, dataset: Dataset[Any], options: LoaderOptions | None = None) -> None:
        self.dataset = SeededDataset(dataset)
        self.options = options or LoaderOptions()
        self.collate = self.options.collate_fn or default_collate
        self.plan = Plan()
        self.loader: DataLoader[Any] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: torch.Tensor, key: int = 0) -> Any:
        """The samples at ``indices`` as one batch (zero rows: an empty batch of the right
        shapes), read in this process."""
        if len(indices) == 0:
            return first_rows(self.batch(torch.zeros(1, dtype=torch.long), key), 0)
        with _rng_kept():
            items = self.dataset.__getitems__(SeededIndices(indices.tolist(), key))
        return batch_inputs(self.collate(items))

    def batches(self, plan: Sequence[torch.Tensor], key: int) -> Iterator[Any]:
        """The batches of ``plan`` in order (none empty), prefetched by the loader processes
        when ``num_workers > 0``."""
        if self.options.num_workers == 0:
            return (self.batch(indices, key) for indices in plan)
        self.start_loader_processes()
        self.plan.lists = [SeededIndices(indices.tolist(), key) for indices in plan]
        assert self.loader is not None
        return iter(self.loader)  # the persistent processes, reset to this plan

    def start_loader_processes(self) -> None:
        """Fork the ``num_workers`` loader processes now, once for the whole attempt (they
        persist across epochs). Call it before the process starts other threads (gloo's,
        OpenMP's): a fork while another thread holds a lock can leave the child stuck in its
        first instruction; seen here in ~1 of 8 runs when every epoch forked afresh."""
        if self.options.num_workers == 0 or self.loader is not None:
            return
        with warnings.catch_warnings():
            # Loader processes share their rank's CPUs (see cpu_affinity) by design; torch's
            # "suggested max number of worker" warning counts just those CPUs.
            warnings.filterwarnings("ignore", message="This DataLoader will create")
            self.loader = self._loader()
            iter(self.loader)  # an empty plan: starts the processes, reads nothing

    def _loader(self) -> DataLoader[Any]:
        o = self.options
        collate = self.collate
        return DataLoader(
            self.dataset,
            batch_sampler=self.plan,
            collate_fn=lambda items: batch_inputs(collate(items)),
            num_workers=o.num_workers,
            pin_memory=o.pin_memory and torch.cuda.is_available(),
            persistent_workers=True,  # forked once (see start_loader_processes)
            prefetch_factor=o.prefetch_factor,
            worker_init_fn=o.worker_init_fn,
            # Loader processes take their base seed from here, not from the training
            # process's generator (its stream must not depend on when a loader starts).
            generator=torch.Generator().manual_seed(0),
        )


class _rng_kept:
    """Keep the training process's torch, Python and NumPy generator states across a fetch."""

    def __enter__(self) -> None:
        self.states = (torch.get_rng_state(), random.getstate(), np.random.get_state())

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self.states[0])
        random.setstate(self.states[1])
        np.random.set_state(self.states[2])


def collated_example(items: list[Any], options: LoaderOptions, what: str) -> Any:
    """A data input's first samples collated as the workers will, checked in the caller: a
    failing ``collate_fn`` or tensors that disagree on the sample count is a ConfigError
    naming ``what`` (e.g. the Dataset's class name)."""
    collate = options.collate_fn or default_collate
    try:
        example = batch_inputs(collate(items))
    except Exception as err:
        how = (
            getattr(options.collate_fn, "__name__", "collate_fn")
            if options.collate_fn
            else "default_collate (set collate_fn, e.g. to pad sequences of different lengths)"
        )
        raise ConfigError(
            f"collating the {what}'s first samples with {how} fails: {type(err).__name__}: {err}"
        ) from None
    try:
        num_samples(example)
    except ValueError as err:
        raise ConfigError(f"a batch of the {what}: {err}") from None
    return example


def read(reader: Any, plan: Sequence[torch.Tensor], key: int) -> Iterator[Micro]:
    """The micro-batches of ``plan`` from any reader, in order; an empty index list becomes a
    stand-in of one sample (see :class:`Micro`), read as the first sample of ``reader``."""
    stand_in = torch.zeros(1, dtype=torch.long)
    sizes = [len(indices) for indices in plan]
    full = [indices if len(indices) else stand_in for indices in plan]
    batches = getattr(reader, "batches", None)
    if batches is not None:
        stream: Iterable[Any] = batches(full, key)
    else:
        stream = (reader.batch(indices) for indices in full)
    for size, batch in zip(sizes, stream, strict=True):
        yield Micro(batch, size)

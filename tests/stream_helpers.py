"""Streams for the tests: sharded or global, with or without a state, finite or endless."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset

FEATURES = 6


def sample(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample number ``i`` of every stream here: a deterministic function of ``i``."""
    x = torch.sin(torch.arange(FEATURES, dtype=torch.float32) * (i + 1) * 0.37)
    return x, torch.tensor(int(x.sum() > 0))


class Rows(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """Samples ``ids`` in order. ``stateful``: torchdata's protocol (resumes where it stood);
    ``shards``: one list of ids per rank for ``shard(rank, world_size)``."""

    def __init__(self, ids: list[int], stateful: bool = True) -> None:
        self.ids, self.position, self.resuming = ids, 0, False
        if not stateful:
            self.state_dict = None  # type: ignore[assignment]
            self.load_state_dict = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.resuming:
            self.position = 0  # a new pass
        self.resuming = False
        while self.position < len(self.ids):
            i = self.ids[self.position]
            self.position += 1  # before yielding: the state counts what was taken
            yield sample(i)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # type: ignore[override]
        self.position, self.resuming = state["position"], True


class NoLen(Rows):
    """:class:`Rows` that does not say its length (``len()`` raises TypeError, as for a
    generator-backed stream): finite, but only its end tells where an epoch ends."""

    def __len__(self) -> int:
        raise TypeError("NoLen has no len()")


class ShardedRows(Rows):
    """A stream that splits itself: ``shard(rank, world_size)`` gives rank r the ids in
    ``shards[r % len(shards)]``... of very different lengths."""

    def __init__(self, shards: list[list[int]], stateful: bool = True) -> None:
        super().__init__([i for shard in shards for i in shard], stateful)
        self.shards, self.stateful = shards, stateful

    def shard(self, rank: int, world_size: int) -> Rows:
        mine = [i for r, shard in enumerate(self.shards) if r % world_size == rank for i in shard]
        return Rows(mine, self.stateful)


class Endless(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """Never ends, has no len(): needs max_steps."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        i = 0
        while True:
            yield sample(i)
            i += 1


#: Rank 0's shard 5 times rank 1's (at 2 ranks): the classic uneven-input hang of plain DDP.
UNEVEN = [list(range(0, 150)), list(range(150, 180))]


def uneven_shards_on_this_rank() -> tuple[int, int, bool]:
    """On each rank of a debug_launcher job: (steps, samples seen, replicas agree) after one
    epoch over :data:`UNEVEN` shards."""
    from torch import nn

    from ai_distributed_training.config import TrainingSettings
    from ai_distributed_training.config.sections import sections_of
    from ai_distributed_training.data import resolve_data
    from ai_distributed_training.training.context import RankContext, RankData
    from ai_distributed_training.training.loop import train
    from ai_distributed_training.training.strategies import DDPStrategy

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    reader = resolve_data(ShardedRows(UNEVEN)).open()
    empty = torch.zeros(0, dtype=torch.long)
    data = RankData(
        reader=reader, task="classification", train_idx=empty, val_reader=reader, val_idx=empty,
        stream=reader,  # type: ignore[arg-type]
    )  # fmt: skip
    torch.manual_seed(0)
    model = nn.Linear(FEATURES, 2)
    strategy = DDPStrategy(rank, world, torch.device("cpu"))
    settings = TrainingSettings(epochs=1, batch_size=20, learning_rate=0.01)
    result = train(model, data, RankContext.of(sections_of(settings), strategy=strategy))
    in_sync = strategy.replicas_identical(strategy.full_state_dict(model))
    strategy.close()
    return result.steps, result.samples_seen, in_sync


class WorkerSplitRows(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """Splits itself among DataLoader workers the usual way: ids ``worker.id::num_workers``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        worker = torch.utils.data.get_worker_info()
        start, step = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for i in range(start, self.n, step):
            yield sample(i)

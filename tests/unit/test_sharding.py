"""Partitioning rules, tested as pure functions (no process group)."""

from __future__ import annotations

import itertools

import pytest
import torch

from ai_distributed_training.training.sharding import (
    epoch_order,
    global_batch,
    num_steps,
    rank_share,
    shard_bounds,
    train_val_split,
)

CASES = [(100, 10, 1), (101, 10, 3), (230, 50, 3), (101, 50, 3), (7, 7, 7), (1000, 1024, 2)]


@pytest.mark.parametrize(("n", "batch_size", "world_size"), CASES)
def test_every_sample_exactly_once_per_epoch(n: int, batch_size: int, world_size: int) -> None:
    for epoch in range(3):
        order = epoch_order(n, seed=5, epoch=epoch)
        seen = torch.cat(
            [
                rank_share(global_batch(order, step, batch_size), rank, world_size)
                for step in range(num_steps(n, batch_size))
                for rank in range(world_size)
            ]
        )
        assert torch.equal(seen.sort().values, torch.arange(n))  # none dropped, none duplicated


@pytest.mark.parametrize(("length", "world_size"), [(10, 3), (2, 3), (0, 4), (17, 17), (18, 4)])
def test_shares_are_contiguous_and_differ_by_at_most_one(length: int, world_size: int) -> None:
    bounds = [shard_bounds(length, r, world_size) for r in range(world_size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_shuffle_is_seeded_and_changes_each_epoch() -> None:
    assert torch.equal(epoch_order(50, 1, 0), epoch_order(50, 1, 0))
    assert not torch.equal(epoch_order(50, 1, 0), epoch_order(50, 1, 1))
    assert not torch.equal(epoch_order(50, 1, 0), epoch_order(50, 2, 0))


def test_last_batch_is_partial_not_dropped() -> None:
    order = epoch_order(230, 0, 0)
    assert num_steps(230, 50) == 5
    assert len(global_batch(order, 4, 50)) == 30


def test_train_val_split_is_disjoint_complete_and_seeded() -> None:
    train, val = train_val_split(1000, 0.1, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(1000))
    again_train, _ = train_val_split(1000, 0.1, seed=3)
    assert torch.equal(train, again_train)
    assert len(train_val_split(1000, 0.0, seed=3)[1]) == 0


def test_rank_outside_world_is_an_error() -> None:
    with pytest.raises(ValueError, match="rank=3"):
        shard_bounds(10, 3, 3)

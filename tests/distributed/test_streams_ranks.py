"""Streams on real gloo ranks: uneven shards end together, a killed worker resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from ai_distributed_training import DistributedTraining
from ai_distributed_training.launch.debug import debug_launcher
from tests.helpers import bitwise_equal
from tests.stream_helpers import ShardedRows, uneven_shards_on_this_rank

pytestmark = pytest.mark.distributed


def test_uneven_shards_end_together_without_a_hang() -> None:
    """150 and 30 samples, shares of 10 a step: both ranks train 15 steps (the last 12 with
    rank 1's share empty: a stand-in weighted 0), every sample once; no rank waits forever."""
    results = debug_launcher(uneven_shards_on_this_rank, num_processes=2, timeout_s=30)
    assert results == [(15, 180, True)] * 2


def test_a_killed_worker_resumes_a_sharded_stream_at_the_exact_sample(tmp_path: Path) -> None:
    """The stream's state after each checkpointed step is saved per rank; the restarted job
    loads it and ends bitwise where the uninterrupted one did."""
    stream = ShardedRows([list(range(0, 200)), list(range(200, 380))])
    trainer = DistributedTraining(epochs=2, batch_size=32, checkpoint_every=3, runs_dir=None)
    clean = trainer.train_distributed(mlp, stream, nodes=2)
    killed = trainer.train_distributed(
        mlp,
        stream,
        nodes=2,
        checkpoint_dir=str(tmp_path / "ckpt"),
        fault_injection=[{"kind": "kill", "rank": 0, "step": 17}],
    )
    assert killed["restarts"] == 1 and bitwise_equal(clean, killed)
    assert clean["samples_seen"] == 2 * 380
    assert "sharded by its shard(rank, world_size), resumed from its state_dict" in clean["data"]


def mlp() -> nn.Module:
    """Dropout: the per-rank random streams must come back exactly too."""
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))


def test_a_finite_stream_without_len_trains_two_epochs_on_two_ranks() -> None:
    """Each epoch ends where the stream does, on both ranks together (no max_steps)."""
    from tests.stream_helpers import FEATURES, NoLen

    result = DistributedTraining(epochs=2, batch_size=16, runs_dir=None).train_distributed(
        nn.Linear(FEATURES, 2), NoLen(list(range(100))), nodes=2
    )
    assert result["steps"] == 2 * 7 and result["samples_seen"] == 200
    assert [h["epoch"] for h in result["history"]] == [1, 2]

"""Dict batches from a user DataLoader with loader processes, through the whole API: the same
guarantees as tensors (exact resume after a killed worker, no process left behind)."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from ai_distributed_training import DistributedTraining
from tests.batch_helpers import NoisyRecords, RecordsNet
from tests.helpers import bitwise_equal

pytestmark = pytest.mark.distributed


def test_a_killed_worker_resumes_bitwise_with_dict_batches_from_loader_processes(
    tmp_path: Path,
) -> None:
    """A worker killed mid-epoch takes its loader processes with it; the restarted job reads
    the same augmented samples (per-sample seeds) and ends bitwise where an uninterrupted one
    does. 432 training samples, 32 per step: 14 steps per epoch, checkpoints every 4."""
    loader = DataLoader(NoisyRecords(), batch_size=32, shuffle=True, num_workers=2)
    trainer = DistributedTraining(epochs=2, checkpoint_every=4, learning_rate=1e-2, runs_dir=None)
    clean = trainer.train_distributed(RecordsNet, loader, nodes=2)
    killed = trainer.train_distributed(
        RecordsNet,
        loader,
        nodes=2,
        checkpoint_dir=str(tmp_path / "ckpt"),
        fault_injection=[{"kind": "kill", "rank": 1, "step": 10}],
    )
    assert killed["restarts"] == 1 and bitwise_equal(clean, killed)
    assert clean["metrics"]["val_accuracy"] > 0.8
    assert "batches of {'x': (2, 6) float32, 'ids': (2,) int64, 'labels'" in clean["data"]

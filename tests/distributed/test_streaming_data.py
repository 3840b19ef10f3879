"""Training from shards on disk gives exactly the weights of the same table in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ai_distributed_training import DistributedTraining
from tests.helpers import bitwise_equal

pytestmark = pytest.mark.distributed


def test_npy_shard_directory_trains_like_the_table_in_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(530, 6))
    table = np.column_stack([x, (x[:, 0] + x[:, 1] > 0).astype(np.float64)])
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, (a, b) in enumerate([(0, 200), (200, 201), (201, 530)]):
        np.save(shards / f"part-{i}.npy", table[a:b])
    trainer = DistributedTraining(epochs=2, batch_size=64, validation_split=0.2, seed=5)
    model = {"model_name": "small", "hidden_sizes": [16]}
    on_disk = trainer.train_distributed(model, str(shards), nodes=2)
    in_memory = trainer.train_distributed(model, (x, table[:, -1].astype(np.int64)), nodes=2)
    assert "read from disk" in on_disk["data"]
    assert on_disk["samples_seen"] == in_memory["samples_seen"] == 2 * 424
    for disk_epoch, memory_epoch in zip(on_disk["history"], in_memory["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):  # validation read from disk too
            assert disk_epoch[key] == memory_epoch[key]
    assert bitwise_equal(on_disk, in_memory)

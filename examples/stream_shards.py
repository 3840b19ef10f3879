"""A stream of samples (an IterableDataset) over a directory of .npy shards: each worker reads
its own files (shard(rank, world_size)), and the stream's position is checkpointed
(state_dict/load_state_dict), so a restarted worker continues at the exact sample."""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import IterableDataset

from ai_distributed_training import DistributedTraining

# Some shards of a table: 8 features, a label that depends on them; shards of different sizes.
folder = Path(tempfile.mkdtemp(prefix="shards-"))
rng = np.random.default_rng(0)
for i, rows in enumerate([900, 700, 1200, 500]):
    x = rng.normal(size=(rows, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64)
    np.save(folder / f"part-{i}.npy", np.column_stack([x, y]))


class NpyShards(IterableDataset):
    def __init__(self, files):
        self.files, self.file, self.row, self.resuming = list(files), 0, 0, False

    def shard(self, rank, world_size):
        return NpyShards(self.files[rank::world_size])  # this worker's files

    def __len__(self):
        return sum(len(np.load(f, mmap_mode="r")) for f in self.files)

    def __iter__(self):
        if not self.resuming:
            self.file, self.row = 0, 0  # a new pass
        self.resuming = False
        while self.file < len(self.files):
            table = np.load(self.files[self.file], mmap_mode="r")
            while self.row < len(table):
                values = torch.from_numpy(np.array(table[self.row]))
                self.row += 1  # the state counts the samples taken
                yield values[:8], values[8].long()
            self.file, self.row = self.file + 1, 0

    def state_dict(self):
        return {"file": self.file, "row": self.row}

    def load_state_dict(self, state):
        self.file, self.row, self.resuming = state["file"], state["row"], True


def mlp():
    return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2))


result = DistributedTraining().train_distributed(
    mlp,
    NpyShards(sorted(folder.glob("*.npy"))),
    nodes=2,
    epochs=4,
    batch_size=64,
    learning_rate=3e-3,
    runs_dir=None,
)
print(f"train accuracy {result['metrics']['train_accuracy']:.3f} after {result['steps']} steps")
print(result["data"])
shutil.rmtree(folder)

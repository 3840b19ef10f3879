"""A model with two inputs: numeric features and a categorical column (store ids) through an
embedding. Samples are (numeric, store_id, target) triples; the trainer calls
model(numeric, store_id) and learns the last element."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ai_distributed_training import DistributedTraining

# A synthetic sales table: 4 numeric columns, 20 stores, and whether a day beat the store's norm.
g = torch.Generator().manual_seed(0)
numeric = torch.randn(6000, 4, generator=g)
store = torch.randint(0, 20, (6000,), generator=g)
store_effect = torch.randn(20, generator=g)
label = (numeric[:, 0] - numeric[:, 1] + 2 * store_effect[store] > 0).long()
table = TensorDataset(numeric, store, label)


class NumericAndStore(nn.Module):
    def __init__(self, stores=20):
        super().__init__()
        self.store = nn.Embedding(stores, 4)
        self.head = nn.Sequential(nn.Linear(4 + 4, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, numeric, store_id):
        return self.head(torch.cat([numeric, self.store(store_id)], dim=1))


result = DistributedTraining().train_distributed(
    NumericAndStore, table, nodes=2, epochs=5, batch_size=128, learning_rate=1e-2, runs_dir=None
)
print(f"validation accuracy {result['metrics']['val_accuracy']:.3f} on {result['data']}")

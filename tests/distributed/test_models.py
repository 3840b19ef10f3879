"""Models people train that used to fail: BatchNorm, parameters unused in forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ai_distributed_training import DistributedTraining, WorkerFailedError

pytestmark = pytest.mark.distributed

DATA = {"samples": 100, "features": 6}
TRAINER = DistributedTraining(epochs=2, batch_size=32, validation_split=0.0, runs_dir=None)


def batchnorm_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))


class WithUnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(6, 2)
        self.extra = nn.Linear(6, 2)  # never called in forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_a_batchnorm_model_trains_and_its_statistics_come_back() -> None:
    """0-dim buffers (num_batches_tracked) used to break the end-of-job weight digest: every
    epoch ran, then the result was lost and the job relaunched three times."""
    result = TRAINER.train_distributed(batchnorm_mlp, DATA, nodes=2)
    assert result["weights_in_sync"]
    bn = result.model[1]
    assert int(bn.num_batches_tracked) == result["steps"] == 8  # 4 steps per epoch, 2 epochs
    assert not torch.equal(bn.running_mean, torch.zeros(16))


def test_drop_last_trains_only_full_global_batches() -> None:
    result = TRAINER.train_distributed(batchnorm_mlp, DATA, nodes=2, drop_last=True)
    assert result["steps"] == 2 * 3 and result["samples_seen"] == 2 * 96


def test_a_parameter_unused_in_forward_is_named_and_not_retried() -> None:
    with pytest.raises(WorkerFailedError) as info:
        TRAINER.train_distributed(WithUnusedLayer, DATA, nodes=2, max_restarts=2)
    text = str(info.value)
    assert "UnusedParametersError" in text and "['extra.weight', 'extra.bias']" in text
    assert "find_unused_parameters=True" in text and "not restarted" in text
    result = TRAINER.train_distributed(WithUnusedLayer, DATA, nodes=2, find_unused_parameters=True)
    assert result["weights_in_sync"]


class Embedder(nn.Module):
    """Integer ids in, an embedding first: what integer inputs are for."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(dim=1))


def test_integer_inputs_reach_an_embedding_and_float64_datasets_train() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (200, 5), generator=g)
    labels = (ids[:, 0] < 25).long()
    result = TRAINER.train_distributed(Embedder, (ids, labels), nodes=2)
    assert result["weights_in_sync"] and result["epochs"] == 2
    wide = TensorDataset(torch.randn(100, 6, dtype=torch.float64), torch.randint(0, 2, (100,)))
    assert TRAINER.train_distributed(batchnorm_mlp, wide, nodes=2)["weights_in_sync"]

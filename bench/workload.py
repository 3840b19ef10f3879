"""The reference workload shared by every variant: same data, model, optimizer and batch."""

from __future__ import annotations

import torch
from torch import nn

from ai_distributed_training.config import SyntheticDataSpec
from ai_distributed_training.data import make_synthetic

SAMPLES, FEATURES, CLASSES = 100_000, 128, 2
HIDDEN = (512, 512)
GLOBAL_BATCH, EPOCHS, LR, SEED = 1024, 2, 1e-3, 0


def data() -> tuple[torch.Tensor, torch.Tensor]:
    return make_synthetic(SyntheticDataSpec(samples=SAMPLES, features=FEATURES, classes=CLASSES))


def model() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(FEATURES, HIDDEN[0]),
        nn.ReLU(),
        nn.Linear(HIDDEN[0], HIDDEN[1]),
        nn.ReLU(),
        nn.Linear(HIDDEN[1], CLASSES),
    )

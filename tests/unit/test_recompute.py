"""Activation checkpointing of any model's blocks by class name: less kept for backward, the
same weights."""

from __future__ import annotations

import torch
from torch import nn

from ai_distributed_training.config import TrainingSettings
from ai_distributed_training.config.sections import sections_of
from ai_distributed_training.training.context import RankContext
from ai_distributed_training.training.loop import train
from ai_distributed_training.training.recompute import checkpoint_blocks
from ai_distributed_training.training.strategies import DDPStrategy
from tests.helpers import rank_data


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.inner = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), Block(32), Block(32), nn.Linear(32, 2))


def saved_bytes(net: nn.Module) -> int:
    """Bytes the forward pass keeps for the backward pass."""
    kept: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(torch.randn(64, 8)).sum().backward()
    return sum(kept)


def test_checkpointed_blocks_keep_less_and_train_to_the_same_weights() -> None:
    plain, recomputed = model(), model()
    assert checkpoint_blocks(recomputed, ["Block", "Linear"]) == 4  # not the Blocks' inner Linears
    assert saved_bytes(recomputed) < 0.5 * saved_bytes(plain)
    assert list(plain.state_dict()) == list(recomputed.state_dict())  # keys unchanged
    strategy = DDPStrategy(0, 1, torch.device("cpu"))
    ctx = RankContext.of(sections_of(TrainingSettings(epochs=2, batch_size=32)), strategy=strategy)
    a, b = model(), model()
    checkpoint_blocks(b, ["Block"])
    train(a, rank_data(), ctx)
    train(b, rank_data(), ctx)
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name

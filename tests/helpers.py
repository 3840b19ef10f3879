"""Assertions shared by the distributed tests."""

from __future__ import annotations

import torch

from ai_distributed_training import TrainingResult


def bitwise_equal(a: TrainingResult, b: TrainingResult) -> bool:
    """Whether two results' trained models hold exactly the same tensors."""
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

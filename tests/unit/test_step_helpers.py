"""Per-step helpers of the loop that were tuned for speed: they must stay exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ai_distributed_training.config import TrainingSettings
from ai_distributed_training.training.optim import build_optimizer
from ai_distributed_training.training.strategies import local_gradients_finite


def _with_grads(value: float) -> nn.Module:
    """A model whose gradients are zero except two elements of one, set to ``value``."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model[0].bias.grad[:2] = value
    return model


@pytest.mark.parametrize(
    ("value", "finite"),
    [
        (1.0, True),
        (3e38, True),
        (float("inf"), False),
        (float("-inf"), False),
        (float("nan"), False),
    ],
)
def test_gradients_finite(value: float, finite: bool) -> None:
    # 3e38 is finite, but the 2-norm of two of them overflows: a 2-norm check would say inf.
    grads = [p.grad for p in _with_grads(value).parameters() if p.grad is not None]
    assert local_gradients_finite(grads) is finite


def test_gradients_finite_without_gradients() -> None:
    assert local_gradients_finite([]) is True
    assert local_gradients_finite([torch.zeros(0)]) is True  # an FSDP rank's empty shard


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_builtin_optimizers_are_fused_on_cpu(name: str) -> None:
    opt = build_optimizer(TrainingSettings(optimizer=name), nn.Linear(2, 2))
    assert opt.defaults["fused"] is True


def test_fused_adamw_matches_the_default_implementation() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(8, 4), nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    fused = build_optimizer(TrainingSettings(weight_decay=0.1), a)
    plain = torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=0.1)
    x = torch.randn(16, 8)
    for _ in range(5):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_the_non_finite_check_is_exact_where_the_fast_norm_overflows() -> None:
    """The 2-norm overflows for elements beyond ~1e19: a finite gradient is confirmed by the
    max-abs norm, not mistaken for a non-finite one."""
    from ai_distributed_training.training.strategies.base import local_gradients_finite

    finite = [torch.full((3,), 1e30), torch.zeros(2)]
    assert local_gradients_finite(finite)
    assert not local_gradients_finite([torch.ones(3), torch.tensor([float("inf")])])
    assert not local_gradients_finite([torch.tensor([1.0, float("nan")])])
    assert local_gradients_finite([torch.zeros(0)])

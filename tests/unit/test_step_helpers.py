"""Per-step helpers of the loop that were tuned for speed: they must stay exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ai_distributed_training.config import TrainingSettings
from ai_distributed_training.config.sections import sections_of
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
    opt = build_optimizer(sections_of(TrainingSettings(optimizer=name)).optim, nn.Linear(2, 2))
    assert opt.defaults["fused"] is True


def test_fused_adamw_matches_the_default_implementation() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(8, 4), nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    fused = build_optimizer(sections_of(TrainingSettings(weight_decay=0.1)).optim, a)
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


def test_the_non_finite_check_leaves_every_gradient_bitwise_as_it_was() -> None:
    """The fused check multiplies by a scale of 1 in place: no value may change (-0.0, the
    smallest subnormals, the largest finite values), in every dtype it takes, alongside a
    sparse gradient (checked apart)."""
    grads = []
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        info = torch.finfo(dtype)
        subnormal = info.smallest_normal * info.eps
        special = [0.0, -0.0, subnormal, -info.max, info.max, 0.1, info.tiny]
        grads.append(torch.tensor(special, dtype=dtype))
    with torch.sparse.check_sparse_tensor_invariants():
        grads.append(torch.sparse_coo_tensor([[0, 2]], [1.5, -2.0], (4,)))
        sparse_inf = torch.sparse_coo_tensor([[1]], [float("inf")], (4,))
    before = [g.clone() for g in grads]
    assert local_gradients_finite(grads)
    for g, b in zip(grads[:4], before[:4], strict=True):
        assert torch.equal(g.view(torch.uint8), b.view(torch.uint8)), g.dtype  # bit for bit
    grads[2][3] = float("nan")  # a NaN in the bfloat16 group only
    assert not local_gradients_finite(grads)
    assert not local_gradients_finite([torch.ones(2), sparse_inf])

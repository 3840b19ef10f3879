"""Global-batch semantics of the loss weighting, checked in one process.

Each simulated rank back-propagates its loss exactly as the loop does; averaging the ranks'
gradients (what DDP does) must give the gradient of the mean loss over the whole global batch.
The naive weighting (each rank's own batch mean) is shown to fail the same check, so the check
can catch a broken weighting.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ai_distributed_training.training.optim import loss_sum_fn
from ai_distributed_training.training.sharding import loss_scale, rank_share


def _grad(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    w = w.clone().requires_grad_(True)
    (loss_sum_fn("classification", None)(x @ w, y) * scale).backward()
    assert w.grad is not None
    return w.grad


def _ddp_average(world_size: int, naive: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(31, 5, generator=g), torch.randint(0, 3, (31,), generator=g)
    w = torch.randn(5, 3, generator=g)
    full = _grad(w, x, y, 1 / len(y))
    grads = []
    for rank in range(world_size):
        idx = rank_share(torch.arange(len(y)), rank, world_size)
        scale = 1 / max(len(idx), 1) if naive else loss_scale(len(y), world_size)
        grads.append(_grad(w, x[idx], y[idx], scale))
    return full, torch.stack(grads).mean(0)  # DDP averages over ranks


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 32])
def test_weighted_shares_give_the_global_batch_gradient(world_size: int) -> None:
    full, averaged = _ddp_average(world_size, naive=False)
    torch.testing.assert_close(averaged, full, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("world_size", [3, 32])
def test_naive_per_rank_means_would_fail_the_check(world_size: int) -> None:
    full, averaged = _ddp_average(world_size, naive=True)
    assert not torch.allclose(averaged, full, rtol=1e-4, atol=1e-6)


def test_user_loss_fn_mean_is_turned_into_a_sum() -> None:
    out, y = torch.randn(6, 3), torch.randint(0, 3, (6,))
    user = loss_sum_fn("classification", F.cross_entropy)(out, y)
    builtin = loss_sum_fn("classification", None)(out, y)
    torch.testing.assert_close(user, builtin)


def test_empty_share_contributes_zero_but_keeps_the_graph() -> None:
    w = torch.randn(4, 2, requires_grad=True)
    loss = loss_sum_fn("classification", None)(torch.zeros(0, 4) @ w, torch.zeros(0).long())
    loss.backward()
    assert w.grad is not None and torch.count_nonzero(w.grad) == 0


def test_regression_loss_is_per_sample_mse_summed() -> None:
    out, y = torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0])
    assert loss_sum_fn("regression", None)(out, y).item() == pytest.approx(1.0 + 4.0)


@pytest.mark.parametrize("naive", [False, True])
def test_micro_batch_accumulation_matches_the_full_batch_only_with_sum_scaling(
    naive: bool,
) -> None:
    """Accumulating micro-batch gradients scaled like the loop (by 1 / global batch) equals the
    full-batch gradient; scaling each micro-batch by its own mean (the naive way) does not."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(13, 5, generator=g), torch.randint(0, 3, (13,), generator=g)
    w = torch.randn(5, 3, generator=g)
    full = _grad(w, x, y, 1 / len(y))
    accumulated = sum(
        _grad(w, x[idx], y[idx], 1 / len(idx) / 4 if naive else loss_scale(len(y), 1))
        for idx in torch.arange(13).tensor_split(4)
    )
    assert torch.allclose(accumulated, full, rtol=1e-5, atol=1e-7) is not naive

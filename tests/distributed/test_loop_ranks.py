"""The loop and the strategies on 2 real gloo ranks, without the launcher (``debug_launcher``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ai_distributed_training.launch.debug import debug_launcher
from ai_distributed_training.training.strategies import DDPStrategy
from tests.helpers import ddp_then_fsdp, optimizer_matrix, resume_is_bitwise, train_with

pytestmark = pytest.mark.distributed


def test_two_ranks_train_the_weights_one_rank_trains() -> None:
    """Global-batch semantics: 2 ranks (DDP or FSDP) end where 1 rank does, up to rounding."""
    one_rank = train_with(DDPStrategy(0, 1, torch.device("cpu")))
    (ddp0, fsdp0, in_sync), (ddp1, fsdp1, _) = debug_launcher(ddp_then_fsdp, num_processes=2)
    assert in_sync
    for name, expected in one_rank.items():
        assert torch.equal(ddp0[name], ddp1[name]), name
        assert torch.equal(fsdp0[name], fsdp1[name]), name
        torch.testing.assert_close(ddp0[name], expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fsdp0[name], expected, rtol=1e-4, atol=1e-5)


def test_every_built_in_optimizer_trains_under_every_strategy() -> None:
    """FSDP with SGD used to fail (no sharding rule for the fused SGD kernel)."""
    results = debug_launcher(optimizer_matrix, num_processes=2)[0]
    assert sorted(results) == sorted(
        f"{s}/{o}" for s in ("ddp", "fsdp") for o in ("sgd", "adam", "adamw")
    )
    for case, (loss, in_sync) in results.items():
        assert math.isfinite(loss) and in_sync, case


@pytest.mark.parametrize("ranks", [3, 4])
def test_resume_is_bitwise_at_any_number_of_ranks(ranks: int, tmp_path: Path) -> None:
    """With 3 or more ranks the order in which an all-reduce adds the ranks' gradients depends
    on where a gradient sits in DDP's bucket; the resumed step must use the same layout as the
    uninterrupted one (it used to use DDP's initial layout: weights differed by ~6e-8)."""
    assert debug_launcher(resume_is_bitwise, str(tmp_path), num_processes=ranks) == [True] * ranks

"""The loop and the strategies on 2 real gloo ranks, without the launcher (``debug_launcher``)."""

from __future__ import annotations

import pytest
import torch

from ai_distributed_training.launch.debug import debug_launcher
from ai_distributed_training.training.strategies import DDPStrategy
from tests.helpers import ddp_then_fsdp, train_with

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

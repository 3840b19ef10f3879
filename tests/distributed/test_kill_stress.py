"""Kills at random steps and moments (in forward, an all-reduce, a checkpoint save), one per
attempt, five in a row for the built-in step and five for a train_step GAN (ten kills): every
restarted job ends bitwise where the uninterrupted one did. ``python -m bench.kill_stress``
runs longer chains; a failure here prints the seed that reproduces it there."""

from __future__ import annotations

import random

import pytest

from bench import kill_stress

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("job", ["builtin", "custom"])
def test_five_kills_at_random_moments_end_bitwise_equal(job: str) -> None:
    seed = random.randrange(2**31)
    out = kill_stress.run(job, kills=5, seed=seed)
    assert out["restarts"] == 5, (seed, out["faults"])
    assert out["steps"][0] == out["steps"][1] == kill_stress.STEPS
    assert out["differ"] == {}, f"seed {seed}: {out['faults']} -> {out['differ']}"

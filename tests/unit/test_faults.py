"""Fault injection's firing rule: each fault fires once, in its attempt, at its step or, when the
attempt resumed past that step, at the attempt's first step (a kill chain of n kills restarts
the job n times even when a delayed kill landed after a later checkpoint)."""

from __future__ import annotations

import pytest
import torch

from ai_distributed_training.config import FaultSpec
from ai_distributed_training.training.faults import FaultInjector, InjectedFault


def _raise(step: int, attempt: int = 0, rank: int = 0) -> FaultSpec:
    return FaultSpec(kind="raise", rank=rank, step=step, attempt=attempt)


def test_a_fault_fires_at_its_step_once() -> None:
    faults = FaultInjector([_raise(3)], rank=0, attempt=0)
    faults.before_step(1)
    faults.before_step(2)
    with pytest.raises(InjectedFault, match="step 3"):
        faults.before_step(3)
    faults.before_step(4)  # fired once: never again


def test_a_fault_whose_step_the_attempt_resumed_past_fires_at_its_first_step() -> None:
    faults = FaultInjector([_raise(7, attempt=1)], rank=0, attempt=1)
    with pytest.raises(InjectedFault, match="step 11"):
        faults.before_step(11)  # attempt 1 resumed at step 10: its fault still fires


def test_faults_of_other_ranks_and_attempts_never_fire() -> None:
    faults = FaultInjector([_raise(2, attempt=1), _raise(2, rank=1)], rank=0, attempt=0)
    for step in range(1, 6):
        faults.before_step(step)


def test_a_nan_fault_makes_the_loss_of_the_step_it_fires_at_nan() -> None:
    faults = FaultInjector([FaultSpec(kind="nan", rank=0, step=2, attempt=0)], rank=0, attempt=0)
    loss = torch.tensor(1.5)
    faults.before_step(4)  # resumed past step 2: fires at 4
    assert torch.isnan(faults.loss(4, loss))
    faults.before_step(5)
    assert faults.loss(5, loss) == loss

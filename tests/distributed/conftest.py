"""Fixtures shared by the distributed tests' modules."""

from __future__ import annotations

import pytest

from ai_distributed_training import TrainingResult


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> TrainingResult:
    """The recovery job (:mod:`.test_recovery`'s settings) run once, without faults, at
    nodes=2: what its interrupted runs must equal bitwise, under torch elastic and Ray alike."""
    from tests.distributed.test_recovery import DATA, MODEL, TRAINER

    runs = tmp_path_factory.mktemp("uninterrupted")
    return TRAINER.train_distributed(MODEL, DATA, nodes=2, runs_dir=str(runs))

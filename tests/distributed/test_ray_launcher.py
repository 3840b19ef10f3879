"""The Ray launcher: Ray Train's workers on a real local Ray instance run the same rank code,
with the same guarantees (exact resume after a killed worker, a failing rank named)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_distributed_training import (
    Callback,
    CallbackContext,
    ConfigError,
    TrainingResult,
    WorkerFailedError,
)
from ai_distributed_training.launch.ray_launcher import POLL_INTERVAL_VAR
from ai_distributed_training.launch.ray_worker import ATTEMPTS_DIR, POINTER_FILE
from ai_distributed_training.training.checkpoint import load_checkpoint
from tests.distributed.test_recovery import DATA, MODEL, TRAINER
from tests.helpers import bitwise_equal

ray = pytest.importorskip("ray")  # the [ray] extra; the dev extra installs it

pytestmark = pytest.mark.distributed

# The recovery job (dropout: the per-rank RNG streams matter; 30 steps, a checkpoint every 4)
# and, as the fixture `uninterrupted`, its run under torch elastic.


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray instance for the module (a start costs seconds), shut down after it."""
    ray.shutdown()
    yield
    ray.shutdown()


class RecordPollInterval(Callback):
    """Writes, on rank 0, the poll interval Ray Train's controller passed on to its workers."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_start(self, ctx: CallbackContext) -> None:
        if ctx.rank == 0:
            self.path.write_text(os.environ.get(POLL_INTERVAL_VAR, "unset"))


def test_killed_ray_worker_is_restarted_and_ends_bitwise_equal_to_elastic(
    local_ray: None, tmp_path: Path, uninterrupted: TrainingResult
) -> None:
    elastic = uninterrupted
    on_ray = TRAINER.train_distributed(
        MODEL,
        DATA,
        nodes=2,
        launcher="ray",
        max_restarts=1,
        fault_injection=[{"kind": "kill", "rank": 1, "step": 6}],  # after step 4's checkpoint
        callbacks=[RecordPollInterval(tmp_path / "interval")],
    )
    assert ray.is_initialized()  # a local instance was started for the call, and kept
    # Train's controller polled every 0.2 s (it passes the variable on to the workers), not
    # every 2 s (each checkpoint's report waits for a poll); the caller's environment is as it was.
    assert (tmp_path / "interval").read_text() == "0.2"
    assert POLL_INTERVAL_VAR not in os.environ
    assert on_ray["restarts"] == 1 and on_ray["nodes_used"] == 2
    events = (Path(on_ray["run_dir"]) / "events.log").read_text()
    # Ray names a killed worker's failure in more than one way (its process died, or its
    # health check failed): the line gives the rank and Ray's words.
    assert re.search(r" WARNING restart 1 of 1: rank 1 failed: \S", events), events
    assert bitwise_equal(on_ray, elastic)
    assert [h["train_loss"] for h in on_ray["history"]] == [
        h["train_loss"] for h in elastic["history"]
    ]
    _check_ray_records(on_ray)


def _check_ray_records(result: TrainingResult) -> None:
    """Ray's storage (the run directory) holds one marker per attempt and, for each of the
    newest checkpoints, a pointer Ray lists that names a valid checkpoint of ours."""
    run_dir = Path(str(result["run_dir"]))
    # The restart resumed from the checkpoint of step 4 (not from scratch).
    assert "resuming at epoch 1, step 4" in (run_dir / "events.log").read_text()
    (storage,) = run_dir.glob("adt-*")
    assert sorted(p.name for p in (storage / ATTEMPTS_DIR).iterdir()) == ["0", "1"]
    pointers = sorted(storage.glob(f"step-*/{POINTER_FILE}"))
    assert pointers, "no checkpoint was registered with Ray"
    newest = json.loads(pointers[-1].read_text())
    assert newest["step"] == 30
    assert load_checkpoint(Path(newest["checkpoint"]))["loop"]["step"] == 30


def test_raising_ray_worker_stops_the_job_naming_its_rank_and_is_not_retried(
    local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error that would repeat (raised before any checkpoint) is not retried, although
    restarts are left: the rule of torch elastic's launcher (Ray alone retried it twice)."""
    with monkeypatch.context() as env, pytest.raises(WorkerFailedError) as caught:
        env.setenv(POLL_INTERVAL_VAR, "0.3")  # the user's own poll interval wins
        TRAINER.train_distributed(
            MODEL,
            DATA,
            nodes=2,
            launcher="ray",
            ray_storage_path=str(tmp_path),
            max_restarts=2,
            fault_injection=[{"kind": "raise", "rank": 1, "step": 2}],
            callbacks=[RecordPollInterval(tmp_path / "interval")],
        )
    assert (tmp_path / "interval").read_text() == "0.3"
    assert caught.value.first.rank == 1
    assert "injected fault" in caught.value.first.message
    assert "faults.py" in caught.value.first.traceback
    assert caught.value.not_restarted is not None
    assert "attempt 1 raised before any checkpoint" in caught.value.not_restarted
    (attempts,) = tmp_path.glob(f"adt-*/{ATTEMPTS_DIR}")
    assert [p.name for p in attempts.iterdir()] == ["0"]  # one attempt: no restart


def test_workers_that_do_not_fit_the_cluster_are_refused_before_any_starts(
    local_ray: None, no_launch: None
) -> None:
    with pytest.raises(ConfigError, match=r"need 1024 CPUs, but the Ray cluster .* has"):
        TRAINER.train_distributed(MODEL, DATA, nodes=2, launcher="ray", threads_per_worker=512)

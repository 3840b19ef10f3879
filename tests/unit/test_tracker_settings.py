"""The trackers setting's checks, before any worker starts, and the records' tracker keys
(the real libraries are exercised in tests/distributed/test_trackers.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from ai_distributed_training import DistributedTraining
from ai_distributed_training.errors import ConfigError
from ai_distributed_training.training.trackers import (
    TRACKERS_FILE,
    flat_params,
    inherit_state,
    read_state,
    scalars,
    write_state,
)

MODEL = {"model_name": "m"}
DATA = {"samples": 40, "features": 2}


@pytest.mark.parametrize(
    ("trackers", "message"),
    [
        (["mlfow"], "'mlfow' is not a tracker; use csv, tensorboard, mlflow, wandb"),
        ([object()], "has no log\\(record\\) method; subclass"),
        (["csv", "csv"], "names a tracker twice"),
    ],
)
def test_bad_trackers_are_named(trackers: list[Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DistributedTraining(trackers=trackers).train_distributed(MODEL, DATA, nodes=1)


def test_a_missing_tracker_library_names_its_pip_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'ai-distributed-training\[wandb\]'"):
        DistributedTraining(trackers=["wandb"]).train_distributed(MODEL, DATA, nodes=1)


def test_mlflow_without_a_run_directory_needs_a_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="set mlflow_tracking_uri"):
        DistributedTraining(trackers=["mlflow"], runs_dir=None).train_distributed(
            MODEL, DATA, nodes=1
        )


def test_records_become_tracker_keys_by_type() -> None:
    record = {"type": "epoch", "step": 9, "time": 1.5, "epoch": 2, "train_loss": 0.25,
              "worker_samples": [3, 4], "flag": True, "note": "x"}  # fmt: skip
    assert scalars(record) == {
        "epoch/epoch": 2.0,
        "epoch/train_loss": 0.25,
        "epoch/worker_samples/0": 3.0,
        "epoch/worker_samples/1": 4.0,
    }
    assert flat_params({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "None",
    }


def test_a_resumed_run_inherits_its_checkpoints_run_tracker_state(tmp_path: Path) -> None:
    old, new, shared = tmp_path / "old", tmp_path / "new", tmp_path / "shared"
    for d in (old / "checkpoints", new, shared):
        d.mkdir(parents=True)
    write_state(old / TRACKERS_FILE, {"mlflow": {"run_id": "abc"}})
    inherit_state(new, old / "checkpoints" / "step-00000010.pt")
    assert read_state(new / TRACKERS_FILE) == {"mlflow": {"run_id": "abc"}}
    write_state(shared / TRACKERS_FILE, {"wandb": {"run_id": "w1"}})  # a shared checkpoint_dir
    inherit_state(new, shared / "step-00000020.pt")
    assert read_state(new / TRACKERS_FILE) == {"wandb": {"run_id": "w1"}}

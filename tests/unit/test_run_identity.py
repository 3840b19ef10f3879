"""Checkpoints belong to their run: restarts, resume="auto" and pruning never take or touch
another run's, and two jobs cannot share a checkpoint directory at once."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import ai_distributed_training.run as run_module
from ai_distributed_training import ConfigError, DistributedTraining
from ai_distributed_training.config import TrainingSettings
from ai_distributed_training.data import resolve_data
from ai_distributed_training.host import directory_lock
from ai_distributed_training.launch.handover import remove_stale_job_dirs
from ai_distributed_training.models import resolve_model
from ai_distributed_training.prepare import prepare
from ai_distributed_training.training.checkpoint import (
    list_checkpoints,
    load_newest_valid,
    save_checkpoint,
)
from ai_distributed_training.training.identity import fingerprint

MODEL = {"model_name": "ident", "hidden_sizes": [8]}
DATA = {"samples": 100, "features": 4}


@pytest.fixture(autouse=True)
def _no_launch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a worker was launched")

    monkeypatch.setattr(run_module, "make_launcher", forbidden)
    yield


def write_checkpoint(
    directory: Path, step: int, run_id: str, model: Any = MODEL, **settings: Any
) -> Path:
    """A checkpoint as a run of ``model`` on DATA with ``settings`` writes it."""
    resolved = TrainingSettings(**settings)
    data = resolve_data(DATA)
    parts = fingerprint(resolve_model(model).skeleton(data.info), data, dict(resolved))
    state = {
        "model": {"w": torch.zeros(2)},
        "loop": {"step": step, "epoch": 1},
        "ranks": [],
        "strategy": "ddp",
        "run_id": run_id,
        "fingerprint": parts,
    }
    return save_checkpoint(directory, step, state, keep=10)


def test_resume_auto_refuses_a_run_with_other_settings_and_names_them(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 8, "earlier", seed=0)
    settings = TrainingSettings(seed=1, resume="auto", checkpoint_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"differs in seed \(0 -> 1\)"):
        prepare(MODEL, DATA, settings)


def test_resume_auto_continues_a_compatible_run(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, 8, "earlier", seed=1)
    settings = TrainingSettings(seed=1, epochs=5, resume="auto", checkpoint_dir=str(tmp_path))
    prepared = prepare(MODEL, DATA, settings)  # more epochs: still compatible
    assert (prepared.checkpoint.plan.directory, prepared.checkpoint.plan.path) == (tmp_path, None)
    assert path.parent == tmp_path


def test_resume_from_a_path_refuses_another_model(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, 8, "earlier", model={**MODEL, "hidden_sizes": [16]})
    with pytest.raises(ConfigError, match=r"differs in model \(different\)"):
        prepare(MODEL, DATA, TrainingSettings(resume=str(path)))


def test_resume_auto_without_checkpoint_dir_finds_the_newest_compatible_run(
    tmp_path: Path,
) -> None:
    older = write_checkpoint(tmp_path / "20260101-100000-ident" / "checkpoints", 4, "a")
    write_checkpoint(tmp_path / "20260101-110000-ident" / "checkpoints", 9, "b", seed=5)
    write_checkpoint(tmp_path / "20260101-120000-other" / "checkpoints", 9, "c")
    settings = TrainingSettings(resume="auto", runs_dir=str(tmp_path))
    assert prepare(MODEL, DATA, settings).checkpoint.plan.directory == older.parent
    fresh = TrainingSettings(resume="auto", runs_dir=str(tmp_path / "none"))
    assert prepare(MODEL, DATA, fresh).checkpoint.plan.directory is None


def test_restarts_and_pruning_see_only_their_own_run(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        write_checkpoint(tmp_path, step, "mine")
    for step in (4, 5, 6):  # another run, later, in the same directory, keeping 2
        state = {"model": {}, "loop": {"step": step}, "run_id": "theirs", "fingerprint": {}}
        save_checkpoint(tmp_path, step, state, keep=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == [f"step-0000000{s}.pt" for s in (6, 5, 3, 2, 1)]  # theirs pruned 4 only
    found = load_newest_valid(tmp_path, lambda meta: meta.get("run_id") == "mine")
    assert found is not None and found[1]["loop"]["step"] == 3


def test_two_jobs_cannot_share_a_checkpoint_directory_at_once(tmp_path: Path) -> None:
    with directory_lock(tmp_path), pytest.raises(ConfigError, match=r"in use by pid \d+"):
        DistributedTraining(runs_dir=None, checkpoint_dir=str(tmp_path)).train_distributed(
            MODEL, DATA, nodes=1
        )


def test_job_directories_of_killed_callers_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stale = tmp_path / f"adt-job-{dead}-abc123"
    mine = tmp_path / f"adt-job-{os.getpid()}-def456"
    for path in (stale, mine):
        (path / "elastic").mkdir(parents=True)
        (path / "data.pt").write_bytes(b"staged")
    assert remove_stale_job_dirs() == [stale]
    assert not stale.exists() and mine.exists()

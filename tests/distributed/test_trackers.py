"""Trackers with the real libraries, offline: one job with every built-in tracker and one of
the user's, a worker killed and restarted, then a later call resuming from its checkpoints.
Each tracker must hold exactly metrics.jsonl's values, in one tracker run throughout."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from ai_distributed_training import DistributedTraining, MetricLogger, TrackerRun
from ai_distributed_training.training.trackers import scalars
from tests import wandb_files

pytestmark = pytest.mark.distributed

MODEL = {"model_name": "tracked", "hidden_sizes": [16]}
DATA = {"samples": 1200, "features": 6}


class Recorder(MetricLogger):
    """A user's tracker: appends what it is given to a file; keeps an id across attempts."""

    name = "recorder"

    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self, run: TrackerRun) -> dict[str, Any] | None:
        self._write({"opened": run.name, "resumed": run.resumed, "project": run.project})
        return {"id": run.resumed["id"] if run.resumed else "first-attempt"}

    def log(self, record: dict[str, Any]) -> None:
        self._write(record)

    def _write(self, entry: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    root = tmp_path_factory.mktemp("tracked")
    trainer = DistributedTraining(
        epochs=2,
        batch_size=64,
        log_every_steps=4,
        checkpoint_every=5,
        runs_dir=str(root / "runs"),
        trackers=["csv", "tensorboard", "mlflow", "wandb", Recorder(root / "recorder.jsonl")],
        tracker_project="adt-tests",
    )
    killed = trainer.train_distributed(
        MODEL,
        DATA,
        nodes=2,
        max_restarts=1,
        fault_injection=[{"kind": "kill", "rank": 1, "step": 12}],
    )
    resumed = trainer.train_distributed(MODEL, DATA, nodes=2, epochs=3, resume="auto")
    return dict(killed), dict(resumed), root


def _latest(run_dir: Path) -> dict[tuple[str, int], dict[str, float]]:
    """metrics.jsonl's values by (type, step), the last written of a step trained again."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["type"] != "start":
            out[(record["type"], record["step"])] = scalars(record)
    return out


def test_mlflow_holds_every_value_of_metrics_jsonl_in_one_run(tracked: tuple) -> None:
    from mlflow import MlflowClient

    killed, resumed, root = tracked
    assert killed["restarts"] == 1
    client = MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("adt-tests")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the restart and the later resumed call continued it
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["batch_size"] == "64" and run.data.params["nodes"] == "2"
    for run_dir in (Path(killed["run_dir"]), Path(resumed["run_dir"])):
        expected = _latest(run_dir)
        keys = {key for values in expected.values() for key in values}
        history = {
            key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            for key in keys
        }
        for (_, step), values in expected.items():
            for key, value in values.items():
                assert history[key][step] == value, (key, step)  # to the last digit
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "report.html", "model.pt"} <= artifacts


def test_wandb_offline_files_hold_the_same_values_under_one_run_id(tracked: tuple) -> None:
    killed, _, _ = tracked
    run_dir = Path(killed["run_dir"])
    state = json.loads((run_dir / "trackers.json").read_text())["wandb"]
    assert state["mode"] == "offline"
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 3  # the first attempt, the restarted one, the caller's artifacts
    assert {f.name for f in files} == {f"run-{state['run_id']}.wandb"}
    # Each attempt's file holds its records' values. The restarted attempt ended normally:
    # every value it logged is there. The killed one keeps what W&B's service had written
    # when the kill came (its last records can be lost): what it holds must be right.
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    second_start = [i for i, r in enumerate(records) if r["type"] == "start"][1]
    for path, attempt, complete in (
        (files[0], records[:second_start], False),
        (files[1], records[second_start:], True),
    ):
        logged = _by_step(wandb_files.history(path))
        logs = [r for r in attempt if r["type"] != "start"]  # a position, not values
        expected = _by_step([{"_step": r["step"], **scalars(r)} for r in logs])
        if complete:
            assert set(logged) == set(expected)
        for step, row in logged.items():
            assert row == expected[step]
    assert "artifact" in wandb_files.kinds(files[-1])


def _by_step(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Rows' values merged by ``_step`` (the step, eval and epoch records of one step
    together), without W&B's own ``_``-keys (``_step``, ``_runtime``, ``_timestamp``)."""
    merged: dict[int, dict[str, Any]] = {}
    for row in rows:
        values = {k: v for k, v in row.items() if not k.startswith("_")}
        merged.setdefault(row["_step"], {}).update(values)
    return merged


def test_csv_tensorboard_and_the_users_tracker_get_the_records(tracked: tuple) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    killed, _, root = tracked
    run_dir = Path(killed["run_dir"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    expected = [
        (r["type"], str(r["step"]), key.split("/", 1)[1], value)
        for r in records
        for key, value in scalars(r).items()
    ]
    assert [(r["type"], r["step"], r["name"], float(r["value"])) for r in rows] == expected
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert "config/text_summary" in events.Tags()["tensors"]  # the settings, in its TEXT tab
    logged = events.Scalars("step/train_loss")
    steps = [r for r in records if r["type"] == "step"]
    assert [e.step for e in logged] == [r["step"] for r in steps]
    assert [e.value for e in logged] == pytest.approx([r["train_loss"] for r in steps], rel=1e-6)
    # The user's tracker: every record metrics.jsonl got (the killed job's, then the resumed
    # call's), and the state it kept reached the restarted attempt and the later call.
    entries = [json.loads(line) for line in (root / "recorder.jsonl").read_text().splitlines()]
    opened = [e for e in entries if "opened" in e]
    kept = {"id": "first-attempt"}
    assert [o["resumed"] for o in opened] == [None, kept, kept]  # attempts 1, 2; the later call
    assert opened[0]["project"] == "adt-tests"
    resumed_dir = Path(tracked[1]["run_dir"])
    both = records + [
        json.loads(x) for x in (resumed_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [e for e in entries if "opened" not in e] == both

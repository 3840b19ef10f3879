"""Run directories, metrics, the report, callbacks and early stopping (real gloo workers)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.image
import pytest
import torch
import yaml

from ai_distributed_training import (
    Callback,
    CallbackContext,
    DistributedTraining,
    EarlyStopping,
    write_report,
)

pytestmark = pytest.mark.distributed

MODEL = {"model_name": "run dir model", "hidden_sizes": [16]}
DATA = {"samples": 1200, "features": 6}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("runs")
    result = DistributedTraining(epochs=3, batch_size=64, log_every_steps=5).train_distributed(
        MODEL, DATA, nodes=2, runs_dir=str(root)
    )
    return dict(result), Path(result["run_dir"])


def test_run_directory_holds_every_artifact(finished_run: tuple[dict, Path]) -> None:
    _, run_dir = finished_run
    assert run_dir.name.endswith("-run_dir_model")  # <timestamp>-<model_name>, made path-safe
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "model.pt",
        "events.log",
        "report.html",
        "loss.png",
        "accuracy.png",
        "throughput.png",
        "workers.png",
        "memory.png",
    ):
        assert (run_dir / name).is_file(), name


def test_config_yaml_is_the_resolved_config(finished_run: tuple[dict, Path]) -> None:
    _, run_dir = finished_run
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["model_name"] == "run dir model"
    assert config["model"]["hidden_sizes"] == [16] and config["model"]["architecture"] == "mlp"
    assert config["data"] == {
        "samples": 1200,
        "features": 6,
        "classes": 2,
        "task": "classification",
        "seed": 0,
    }
    assert (config["nodes"], config["epochs"], config["batch_size"]) == (2, 3, 64)
    assert config["learning_rate"] == 1e-3  # defaults are resolved into the file too


def test_metrics_are_rank_aggregated_with_per_worker_timing(
    finished_run: tuple[dict, Path],
) -> None:
    result, run_dir = finished_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    # The attempt's start says where it begins and how far it goes (the live page's ETA).
    start = {k: v for k, v in records[0].items() if k != "time"}
    assert start == {
        "type": "start", "epoch": 1, "step": 0, "samples": 0, "epochs": 3,
        "total_steps": result["steps"], "steps_per_epoch": result["steps"] // 3,
        "world_size": 2,
    }  # fmt: skip
    assert [r["time"] for r in records] == sorted(r["time"] for r in records)
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert [s["step"] for s in steps][:3] == [5, 10, 15]
    for record in steps + epochs:
        assert len(record["worker_step_time_s"]) == 2 and len(record["worker_samples"]) == 2
        assert all(t > 0 for t in record["worker_step_time_s"])
    for record in steps:  # each rank's time alone per step: within its step time
        alone, whole = record["worker_alone_s"], record["worker_step_time_s"]
        assert len(alone) == 2 and all(0 < a <= w for a, w in zip(alone, whole, strict=True))
    # Each rank's peak memory so far (what the live page and the report show per rank): a
    # running peak, never above the one the result reports at the end.
    peaks = [r["worker_peak_memory_bytes"] for r in records if r["type"] != "start"]
    assert all(len(p) == 2 and min(p) > 10**7 for p in peaks)
    for rank in (0, 1):
        assert [p[rank] for p in peaks] == sorted(p[rank] for p in peaks)
        assert peaks[-1][rank] <= result["peak_memory_per_worker_bytes"][rank]
    # Per-worker samples add up to the whole epoch: every sample, across both ranks.
    assert all(sum(e["worker_samples"]) == 1080 for e in epochs)
    assert epochs[-1]["train_loss"] == pytest.approx(result["final_loss"])
    assert epochs[-1]["val_accuracy"] == pytest.approx(result["metrics"]["val_accuracy"])


def test_summary_and_weights(finished_run: tuple[dict, Path]) -> None:
    result, run_dir = finished_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result))
    state = torch.load(run_dir / "model.pt", weights_only=True)
    assert set(state) == {"1.weight", "1.bias", "3.weight", "3.bias"}


def test_events_log_tells_the_story_once(finished_run: tuple[dict, Path]) -> None:
    _, run_dir = finished_run
    events = (run_dir / "events.log").read_text()
    assert events.count("Starting distributed training across 2 nodes...") == 1
    assert events.count("epoch 3/3:") == 1
    assert events.count("Distributed training complete.") == 1


def test_report_has_real_plots_and_the_summary(finished_run: tuple[dict, Path]) -> None:
    result, run_dir = finished_run
    html = (run_dir / "report.html").read_text()
    for name in ("loss.png", "accuracy.png", "throughput.png", "workers.png", "memory.png"):
        data = (run_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name
        height, width = matplotlib.image.imread(run_dir / name).shape[:2]
        assert width >= 400 and height >= 250
        assert f'data-file="{name}"' in html and f'href="{name}"' in html
    assert "data:image/png;base64," in html  # self-contained: opens offline
    assert f"{result['final_loss']:.6g}" in html and "run dir model" in html


def test_report_re_renders_from_the_directory(finished_run: tuple[dict, Path]) -> None:
    _, run_dir = finished_run
    (run_dir / "report.html").unlink()
    (run_dir / "loss.png").unlink()
    assert write_report(run_dir) == run_dir / "report.html"
    assert (run_dir / "loss.png").read_bytes().startswith(PNG_MAGIC)


def test_no_run_directory_when_disabled() -> None:
    result = DistributedTraining(epochs=1, runs_dir=None).train_distributed(
        MODEL, {"samples": 100, "features": 3}, nodes=2
    )
    assert result["run_dir"] is None and not Path("runs").exists()


class Recorder(Callback):
    """Writes what every hook saw on every rank to a file per rank."""

    def __init__(self, out_dir: str, stop_on_rank: int | None = None) -> None:
        self.out_dir, self.stop_on_rank = out_dir, stop_on_rank

    def _write(self, hook: str, ctx: CallbackContext) -> None:
        with open(os.path.join(self.out_dir, f"rank{ctx.rank}.jsonl"), "a") as f:
            f.write(
                json.dumps(
                    {"hook": hook, "epoch": ctx.epoch, "step": ctx.step, "metrics": ctx.metrics}
                )
                + "\n"
            )

    def on_train_start(self, ctx: CallbackContext) -> None:
        self._write("start", ctx)

    def on_step_end(self, ctx: CallbackContext) -> None:
        self._write("step", ctx)

    def on_epoch_end(self, ctx: CallbackContext) -> None:
        self._write("epoch", ctx)
        if ctx.rank == self.stop_on_rank and ctx.epoch == 2:
            ctx.request_stop()  # only ONE rank asks: all must stop together

    def on_train_end(self, ctx: CallbackContext) -> None:
        self._write("end", ctx)


def test_callbacks_run_on_every_rank_with_the_same_reduced_metrics(tmp_path: Path) -> None:
    result = DistributedTraining(epochs=2, batch_size=50, runs_dir=None).train_distributed(
        MODEL, {"samples": 300, "features": 6}, nodes=3, callbacks=[Recorder(str(tmp_path))]
    )
    seen = [
        [json.loads(line) for line in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()]
        for r in range(3)
    ]
    assert seen[0] == seen[1] == seen[2]  # identical hooks, steps and reduced metrics
    hooks = [h["hook"] for h in seen[0]]
    assert hooks == ["start"] + (["step"] * 6 + ["epoch"]) * 2 + ["end"]
    epoch_metrics = [h["metrics"] for h in seen[0] if h["hook"] == "epoch"]
    assert epoch_metrics[-1]["train_loss"] == pytest.approx(result["final_loss"])


def test_a_stop_asked_by_one_rank_stops_all_ranks_together(tmp_path: Path) -> None:
    result = DistributedTraining(epochs=5, batch_size=50, runs_dir=None).train_distributed(
        MODEL,
        {"samples": 300, "features": 6},
        nodes=3,
        callbacks=[Recorder(str(tmp_path), stop_on_rank=2)],
    )
    assert result["stopped_early"] is True and result["epochs"] == 2
    assert len(result["history"]) == 2


def test_early_stopping_on_validation_loss() -> None:
    # min_delta is so large that no epoch counts as an improvement after the first.
    stopper = EarlyStopping(monitor="val_loss", patience=2, min_delta=10.0)
    result = DistributedTraining(epochs=10, batch_size=64, runs_dir=None).train_distributed(
        MODEL, DATA, nodes=2, callbacks=[stopper]
    )
    assert result["stopped_early"] and result["epochs"] == 3


def test_tensorboard_event_files() -> None:
    pytest.importorskip("tensorboard")
    result = DistributedTraining(epochs=1, tensorboard=True, log_every_steps=2).train_distributed(
        MODEL, {"samples": 200, "features": 3}, nodes=2, batch_size=20
    )
    events = list((Path(result["run_dir"]) / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_progress_lines_when_asked(capfd: pytest.CaptureFixture[str]) -> None:
    DistributedTraining(
        epochs=1, progress="lines", log_every_steps=3, runs_dir=None
    ).train_distributed(MODEL, {"samples": 300, "features": 3}, nodes=2, batch_size=30)
    err = capfd.readouterr().err
    assert err.count("[adt] epoch 1/1 step 3/9 loss=") == 1
    assert "samples/s=" in err and "eta=" in err


def test_progress_bar_when_asked(capfd: pytest.CaptureFixture[str]) -> None:
    DistributedTraining(epochs=2, progress="bar", runs_dir=None).train_distributed(
        MODEL, {"samples": 300, "features": 3}, nodes=2, batch_size=30
    )
    err = capfd.readouterr().err
    assert "epoch 2/2" in err and "18/18" in err and "step/s" in err  # tqdm, on rank 0 only
    assert "loss=" in err and "samples_s=" in err  # the postfix from the reduced records

"""The live page's reading of a run directory and its server, on hand-written run files (the
browser test in tests/distributed/test_watch_page.py watches a real job)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ai_distributed_training import DistributedTraining
from ai_distributed_training.cli import main
from ai_distributed_training.errors import ConfigError
from ai_distributed_training.watch import RunReader, WatchServer, start_server

STAMP = "2026-12-03 10:00:{:02d}"


def _run(tmp_path: Path, name: str = "20261203-100000-m") -> Path:
    run_dir = tmp_path / name
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("nodes: 3\nstrategy: ddp\nmax_restarts: 2\n")
    launcher = {"host": socket.gethostname(), "pid": os.getpid()}
    (run_dir / "launcher.json").write_text(json.dumps(launcher))
    _event(run_dir, 0, "INFO", "Starting distributed training across 3 nodes...")
    return run_dir


def _event(run_dir: Path, second: int, level: str, message: str) -> None:
    with (run_dir / "events.log").open("a") as f:
        f.write(f"{STAMP.format(second)},250 {level} {message}\n")


def _at(second: float) -> float:
    return time.mktime(time.strptime(STAMP.format(0), "%Y-%m-%d %H:%M:%S")) + second


def _record(run_dir: Path, record: dict, *, end: str = "\n") -> None:
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + end)


def _start(run_dir: Path, second: float, step: int = 0) -> None:
    plan = {"epoch": 1, "step": step, "samples": 64 * step, "epochs": 2, "total_steps": 100}
    _record(run_dir, {"type": "start", **plan, "world_size": 3, "time": _at(second)})


def _step(run_dir: Path, second: float, step: int, alone: list[float], **extra: float) -> None:
    record = {
        "type": "step",
        "epoch": 1,
        "step": step,
        "samples": 64 * step,
        "train_loss": 1.0 / step,
        "samples_per_second": 640.0,
        "worker_step_time_s": [0.1, 0.1, 0.1],
        "worker_samples": [210.0, 210.0, 220.0],
        "worker_peak_memory_bytes": [10**8, 2 * 10**8, 3 * 10**8],
        "worker_alone_s": alone,
        "time": _at(second),
    }
    _record(run_dir, {**record, **extra})


def test_a_run_goes_from_starting_to_training_to_restarting_and_back(tmp_path: Path) -> None:
    run_dir = _run(tmp_path)
    reader = RunReader(run_dir)
    assert reader.snapshot()["state"] == "starting"
    _start(run_dir, 1)
    for i, step in enumerate((10, 20, 30)):
        _step(run_dir, 2 + i, step, [0.05, 0.05, 0.05])
    snap = reader.snapshot()
    assert (snap["state"], snap["attempt"]) == ("training", 1)
    position = snap["position"]
    assert position["step"] == 30 and position["samples"] == 64 * 30
    assert position["steps_per_s"] == pytest.approx(10.0)
    assert position["eta_s"] == pytest.approx(7.0)  # 70 steps left at 10 steps/s
    assert snap["curves"]["train_loss"] == [[10, 0.1], [20, 0.05], [30, 1 / 30]]
    assert snap["config"] == {"nodes": 3, "strategy": "ddp", "max_restarts": 2}

    _event(run_dir, 6, "WARNING", "restart 1 of 2: rank 2 was killed by SIGKILL")
    snap = reader.snapshot()
    assert (snap["state"], snap["detail"]) == (
        "restarting",
        "restart 1 of 2: rank 2 was killed by SIGKILL",
    )
    assert snap["attempt"] == 2
    assert snap["restarts"] == [
        {"time": _at(6.25), "restart": 1, "of": 2, "reason": "rank 2 was killed by SIGKILL"}
    ]
    _start(run_dir, 8, step=20)  # the new attempt resumed at step 20: steps 21.. again
    assert reader.snapshot()["state"] == "training"
    _step(run_dir, 9, 30, [0.05, 0.05, 0.05], train_loss=0.5)
    snap = reader.snapshot()
    assert snap["curves"]["train_loss"][-1] == [30, 0.5]  # the step trained again counts
    assert snap["position"]["steps_per_s"] is None  # the new attempt has one record yet


def test_a_slow_rank_is_flagged_and_memory_shown_per_rank(tmp_path: Path) -> None:
    run_dir = _run(tmp_path)
    _start(run_dir, 1)
    _step(run_dir, 2, 10, [0.050, 0.055, 0.090])
    ranks = RunReader(run_dir).snapshot()["ranks"]
    assert [r["straggler"] for r in ranks] == [False, False, True]  # 0.09 > 1.2 x 0.055
    assert [r["peak_memory_bytes"] for r in ranks] == [10**8, 2 * 10**8, 3 * 10**8]
    _step(run_dir, 3, 20, [0.050, 0.055, 0.060])
    assert not any(r["straggler"] for r in RunReader(run_dir).snapshot()["ranks"])


def test_a_half_written_record_waits_for_its_end(tmp_path: Path) -> None:
    run_dir = _run(tmp_path)
    reader = RunReader(run_dir)
    _start(run_dir, 1)
    line = json.dumps({"type": "step", "step": 5, "train_loss": 0.5, "time": _at(2)})
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(line[:20])
    assert reader.snapshot()["curves"]["train_loss"] == []
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(line[20:] + "\n")
    assert reader.snapshot()["curves"]["train_loss"] == [[5, 0.5]]


def test_failed_finished_and_interrupted_runs(tmp_path: Path) -> None:
    failed = _run(tmp_path, "a")
    _event(failed, 5, "ERROR", "Distributed training failed: rank 1 raised ValueError: bad")
    assert RunReader(failed).snapshot()["state"] == "failed"
    assert RunReader(failed).snapshot()["detail"] == "rank 1 raised ValueError: bad"

    finished = _run(tmp_path, "b")
    (finished / "summary.json").write_text(json.dumps({"final_loss": 0.25, "steps": 9}))
    (finished / "loss.png").write_bytes(b"png")
    snap = RunReader(finished).snapshot()
    assert (snap["state"], snap["plots"], snap["summary"]["final_loss"]) == (
        "finished",
        ["loss.png"],
        0.25,
    )

    # A launcher killed without a word: its pid is gone on this host.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True).stdout.strip()  # fmt: skip
    interrupted = _run(tmp_path, "c")
    reader = RunReader(interrupted)
    alive = reader.mark()
    (interrupted / "launcher.json").write_text(
        json.dumps({"host": socket.gethostname(), "pid": int(gone)})
    )
    assert reader.mark()[-1] != alive[-1]  # a killed launcher writes nothing: still news
    snap = reader.snapshot()
    assert snap["state"] == "interrupted" and gone in snap["detail"]
    # On another host the watcher cannot tell: it goes by the files.
    (interrupted / "launcher.json").write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    assert RunReader(interrupted).snapshot()["state"] == "starting"


def _get(url: str, method: str = "GET") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method)) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_the_server_serves_runs_read_only(tmp_path: Path) -> None:
    old, new = _run(tmp_path, "20261203-100000-old"), _run(tmp_path, "20261203-110000-new")
    (old / "summary.json").write_text("{}")
    (old / "loss.png").write_bytes(b"\x89PNG")
    (tmp_path / "not-a-run").mkdir()
    server = WatchServer(tmp_path).start()
    try:
        status, page = _get(server.url)
        assert status == 200 and b"<title>adt watch</title>" in page
        runs = json.loads(_get(server.url + "api/runs")[1])
        assert [(r["name"], r["state"]) for r in runs] == [
            (new.name, "starting"),
            (old.name, "finished"),
        ]
        snap = json.loads(_get(server.url + f"api/run?run={new.name}")[1])
        assert snap["name"] == new.name
        assert _get(server.url + f"files/{old.name}/loss.png") == (200, b"\x89PNG")
        for bad in ("files/../secret.png", f"files/{old.name}/config.yaml", "api/run?run=..",
                    "api/run?run=not-a-run", "nothing"):  # fmt: skip
            assert _get(server.url + bad)[0] == 404, bad
        for method in ("POST", "PUT", "DELETE"):
            assert _get(server.url + "api/runs", method)[0] == 405
        # The stream sends a snapshot at once, then each change.
        with urllib.request.urlopen(server.url + f"api/stream?run={new.name}", timeout=10) as s:
            assert json.loads(s.readline().removeprefix(b"data: "))["state"] == "starting"
            s.readline()
            _event(new, 9, "ERROR", "Distributed training failed: rank 0 raised")
            assert json.loads(s.readline().removeprefix(b"data: "))["state"] == "failed"
    finally:
        server.stop()


def test_bad_watch_settings_are_refused_before_any_worker(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"watch=True .* runs_dir=None"):
        DistributedTraining(watch=True, runs_dir=None).train_distributed(
            {"model_name": "m"}, {"samples": 10, "features": 2}, nodes=1
        )
    with pytest.raises(ConfigError, match="watch_port"):
        DistributedTraining(watch_port=70000)
    with pytest.warns(UserWarning, match="open to whoever can reach"):
        start_server(tmp_path, host="0.0.0.0", port=0).stop()
    assert main(["watch", str(tmp_path / "none")]) == 2

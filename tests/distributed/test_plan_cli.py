"""`adt plan` end to end: a real calibration (gloo processes), then plans from its saved profile."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ai_distributed_training.planner.profiles import (
    default_profile_path,
    load_profile,
    save_profile,
)
from tests.helpers import adt

pytestmark = pytest.mark.distributed


def test_calibrate_then_plan_json_plot_and_edited_profile(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: {model_name: m, hidden_sizes: [64]}\ndata: {samples: 500, features: 8}\n"
    )
    proc = adt(
        "plan", "--config", str(config), "--set", "batch_size=64", "--calibrate",
        "--nodes", "2", "4", "--plot", str(tmp_path / "p.png"),
        "--save-hardware", str(tmp_path / "hw.yaml"), env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "recommended:" in proc.stdout and "this-machine" in proc.stdout
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    os.environ["XDG_CACHE_HOME"] = env["XDG_CACHE_HOME"]
    try:
        saved = load_profile(default_profile_path())  # the calibration was kept for reuse
    finally:
        del os.environ["XDG_CACHE_HOME"]
    assert saved.kind == "cpu" and saved.hosts == 1 and saved.slot_flops > 1e8
    assert set(saved.measured) >= {2} and saved.worker_baseline_bytes > 50e6
    assert load_profile(tmp_path / "hw.yaml") == saved

    # An edited copy of the profile: 10x the latency makes communication 10x dearer.
    edited = saved.model_copy(
        update={"measured": {}, "intra_host": saved.intra_host.model_copy(
            update={"latency_s": 10 * saved.intra_host.latency_s, "bandwidth_bytes_per_s": 1e15})}
    )  # fmt: skip
    save_profile(edited, tmp_path / "slow.yaml")
    rows = {}
    for name in ("hw.yaml", "slow.yaml"):
        proc = adt(
            "plan", "--config", str(config), "--hardware", str(tmp_path / name),
            "--json", "--nodes", "2", env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        rows[name] = {r["nodes"]: r for r in json.loads(proc.stdout)}
    assert sorted(rows["hw.yaml"]) == [1, 2]
    latency = 2 * saved.intra_host.latency_s  # the latency term of a 2-rank ring
    assert rows["slow.yaml"][2]["communication_s"] == pytest.approx(10 * latency, rel=1e-6)


def test_plan_errors_exit_2_naming_the_value(tmp_path: Path) -> None:
    proc = adt("plan", "--hardware", "tpu-pod", env={"XDG_CACHE_HOME": str(tmp_path)})
    assert proc.returncode == 2 and "hardware='tpu-pod'" in proc.stderr
    assert "Traceback" not in proc.stderr

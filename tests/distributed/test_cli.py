"""The `adt` command: train from YAML and --set, exit codes, report, doctor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ai_distributed_training.config import TrainingSettings
from ai_distributed_training.config.runfile import PYTHON_ONLY
from tests.conftest import worker_pids
from tests.helpers import adt

pytestmark = pytest.mark.distributed


def test_train_help_lists_every_setting_with_default_and_meaning() -> None:
    proc = adt("train", "--help")
    assert proc.returncode == 0
    for name, field in TrainingSettings.model_fields.items():
        if name in PYTHON_ONLY:
            continue
        default = field.get_default(call_default_factory=True)
        assert f"  {name} (default: {default!r})" in proc.stdout, name
        assert str(field.description)[:40] in proc.stdout.replace("\n      ", " "), name


def test_train_from_a_config_file_with_overrides(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: {model_name: mn, hidden_sizes: [16]}\n"
        "data: {samples: 900, features: 16}\n"
        "epochs: 2\nbatch_size: 64\n"
    )
    proc = adt(
        "train",
        "--config",
        str(config),
        "--nodes",
        "2",
        "--set",
        "data.samples=600",
        "--set",
        "learning_rate=0.01",
        "--set",
        "log_every_steps=4",
    )
    assert proc.returncode == 0, proc.stderr
    assert "model_name='mn', nodes_used=2" in proc.stdout
    run_dir = Path(proc.stdout.split("run directory: ")[1].strip())
    resolved = (run_dir / "config.yaml").read_text()
    assert "samples: 600" in resolved and "learning_rate: 0.01" in resolved
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["samples_seen"] == 2 * 540
    # Not a terminal: progress comes as plain periodic lines (for CI and Slurm logs).
    assert "[adt] epoch 1/2 step 4/" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "lerning_rate=0.1"],
            "unknown key 'lerning_rate' in --set 'lerning_rate=0.1' "
            "(did you mean 'learning_rate'?)",
        ),
        (
            ["--set", "samples=10"],
            "unknown key 'samples' in --set 'samples=10' (did you mean 'data.samples'?)",
        ),
        (["--set", "nodes=0"], "setting nodes=0 is invalid"),
        (["--set", "data.featurs=3"], "unknown data key 'featurs' (did you mean 'features'?)"),
        (["--set", "model.architecture=resnet"], "architecture='resnet'"),
        (["--set", "data=/nonexistent.csv"], "does not exist"),
        (["--set", "epochs"], "--set 'epochs' must look like key=value"),
    ],
)
def test_config_errors_exit_2_with_one_line_and_no_traceback(args: list[str], message: str) -> None:
    proc = adt("train", *args, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_unknown_key_in_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: {model_name: mn}\nepocs: 3\n")
    proc = adt("train", "--config", str(config), timeout=60)
    assert proc.returncode == 2
    assert "unknown key 'epocs'" in proc.stderr and "'epochs'" in proc.stderr


def test_training_failure_exits_1_naming_the_rank() -> None:
    command = [
        sys.executable,
        "-m",
        "ai_distributed_training",
        "train",
        "--nodes",
        "2",
        "--set",
        "epochs=1000",
        "--set",
        "data.samples=20000",
        "--set",
        "runs_dir=null",
        "--set",
        "max_restarts=0",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(worker_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        os.kill(max(worker_pids()), signal.SIGKILL)  # the rank-1 worker was started last
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # never leave the job running, whatever failed above
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "adt: training failed: worker rank" in stderr and "killed by SIGKILL" in stderr


def test_report_command(tmp_path: Path) -> None:
    proc = adt("report", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "not a finished run directory" in proc.stderr


def test_doctor_checks_a_real_all_reduce() -> None:
    proc = adt("doctor", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS  all-reduce" in proc.stdout and "2 gloo processes all-reduced" in proc.stdout
    assert "PASS  run directory" in proc.stdout and "8 passed, 0 failed" in proc.stdout
    assert "PASS  ray            Ray 2." in proc.stdout  # the dev extra installs Ray
    unreachable = adt("doctor", "--ray-address", "127.0.0.1:1", timeout=120)
    assert unreachable.returncode == 1
    assert "FAIL  ray" in unreachable.stdout and "nothing answers there" in unreachable.stdout

"""The documented examples run as written, from a script without a __main__ guard."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from ai_distributed_training import DistributedTraining
from ai_distributed_training.host import available_cores

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]


def _run(script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,  # cwd stays the test's tmp dir, so the run directory lands there
    )


def test_quickstart_example_runs_exactly_as_written() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "examples" / "quickstart.py").read_text()
    assert example in readme, "examples/quickstart.py must be the README's quick start verbatim"
    proc = _run(ROOT / "examples" / "quickstart.py")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(
        "Distributed Training Result: TrainingResult(model_name="
        "'NeuralNet_Model', nodes_used=3, device='CPUs', "
        "status='distributed_trained'"
    ), line
    assert "val_accuracy=0.9" in line  # the synthetic task is learnt, not just run
    assert proc.stderr.count("exceeds the") <= 1  # the oversubscription warning, once at most


def test_user_classes_and_lambdas_from_a_script_main(tmp_path: Path) -> None:
    """Objects defined in a script's __main__ reach the workers; the script is not re-run."""
    script = tmp_path / "user_script.py"
    script.write_text(
        textwrap.dedent("""
        import numpy as np
        import torch
        from torch import nn
        from ai_distributed_training import DistributedTraining

        print("script body ran")

        class MyNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
            def forward(self, x):
                return self.body(x)

        rng = np.random.default_rng(0)
        X = rng.normal(size=(300, 6)).astype(np.float32)
        y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 1).astype(np.int64)
        trainer = DistributedTraining(epochs=2, batch_size=32)
        a = trainer.train_distributed(MyNet(), (X, y), nodes=2)
        b = trainer.train_distributed(lambda: MyNet(), (X, y), nodes=2,
                                      loss_fn=lambda out, t: nn.functional.cross_entropy(out, t))
        print(type(a.model).__name__, type(b.model).__name__, a["nodes_used"], b["model_name"])
    """)
    )
    proc = _run(script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["script body ran", "MyNet MyNet 2 MyNet"]


def test_many_nodes_on_two_cores_finish_and_warn_once() -> None:
    """nodes=16 on a small machine: slow but finishes, with one oversubscription warning.
    (nodes=8 was dropped from this test to keep the suite under 10 minutes: ~15 s, no new path.)"""
    model = {"model_name": "NeuralNet_Model"}
    data = {"samples": 3000, "features": 128}
    nodes = 16
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = DistributedTraining(epochs=1).train_distributed(model, data, nodes=nodes)
    assert result["nodes_used"] == nodes and result["weights_in_sync"]
    cores = available_cores()
    assert result["threads_per_worker"] == max(1, cores // nodes)
    messages = [str(w.message) for w in caught if "exceeds the" in str(w.message)]
    assert len(messages) == (1 if nodes > cores else 0), messages

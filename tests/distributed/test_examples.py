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
    """nodes=8 on a small machine (4 workers a core on 2 cores): slow but finishes, with one
    oversubscription warning. (nodes=16 before: the same path at twice the worker start-ups,
    ~2 CPU-seconds of imports each.)"""
    model = {"model_name": "NeuralNet_Model"}
    data = {"samples": 3000, "features": 128}
    nodes = 8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = DistributedTraining(epochs=1).train_distributed(model, data, nodes=nodes)
    assert result["nodes_used"] == nodes and result["weights_in_sync"]
    cores = available_cores()
    assert result["threads_per_worker"] == max(1, cores // nodes)
    messages = [str(w.message) for w in caught if "exceeds the" in str(w.message)]
    assert len(messages) == (1 if nodes > cores else 0), messages


def _number(line_start: str, stdout: str) -> float:
    line = next(ln for ln in stdout.splitlines() if ln.startswith(line_start))
    return float(line.removeprefix(line_start).split()[0])


def test_gpt2_byte_language_model_example_learns_text() -> None:
    """A Hugging Face model from a config, dict batches, its own loss, a padding collate."""
    proc = _run(ROOT / "examples" / "gpt2_bytes.py")
    assert proc.returncode == 0, proc.stderr
    assert _number("train loss", proc.stdout) < 3.5  # uniform guessing: log(256) = 5.55
    assert _number("validation loss", proc.stdout) < 3.5


def test_two_input_model_example_learns_from_both_inputs() -> None:
    """The label depends on the store id too: a model ignoring it stays near 80%."""
    proc = _run(ROOT / "examples" / "two_inputs.py")
    assert proc.returncode == 0, proc.stderr
    assert _number("validation accuracy", proc.stdout) > 0.93


def test_digits_cnn_example_trains_through_a_dataloader_with_loader_processes() -> None:
    proc = _run(ROOT / "examples" / "digits_cnn.py")
    assert proc.returncode == 0, proc.stderr
    assert _number("validation accuracy", proc.stdout) > 0.8
    assert "from a DataLoader (num_workers=2)" in proc.stdout
    assert "UserWarning" not in proc.stderr  # no loader-process warning per rank


def test_keras_example_returns_the_trained_keras_model() -> None:
    """Keras names layers from a per-process counter: the weights come back by position."""
    proc = _run(ROOT / "examples" / "keras_digits.py")
    assert proc.returncode == 0, proc.stderr
    assert _number("validation accuracy", proc.stdout) > 0.9
    assert _number("accuracy of the returned model on 200 images:", proc.stdout) > 0.9


def test_gan_example_learns_the_ring() -> None:
    """An untrained generator's points lie ~1.9 from the circle."""
    proc = _run(ROOT / "examples" / "gan_2d.py")
    assert proc.returncode == 0, proc.stderr
    assert _number("mean distance of generated points from the circle:", proc.stdout) < 1.0


def test_distillation_example_trains_only_the_student() -> None:
    proc = _run(ROOT / "examples" / "distillation.py")
    assert proc.returncode == 0, proc.stderr
    assert _number("student accuracy on all digits:", proc.stdout) > 0.85


def test_stream_example_reads_its_shards_per_worker() -> None:
    proc = _run(ROOT / "examples" / "stream_shards.py")
    assert proc.returncode == 0, proc.stderr
    assert _number("train accuracy", proc.stdout) > 0.9
    assert "a stream (3300 samples), sharded by its shard(rank, world_size)" in proc.stdout

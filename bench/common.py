"""What every benchmark here shares: the library run from a fresh interpreter, and running a
command while timing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.workload import LOOP_START_FILE

ROOT = Path(__file__).resolve().parents[1]
OURS = """
import json
from ai_distributed_training import DistributedTraining
from bench import workload as w
r = DistributedTraining(epochs=w.EPOCHS, batch_size=w.GLOBAL_BATCH, learning_rate=w.LR,
                        seed=w.SEED, validation_split=0.0, runs_dir=None, max_restarts=0,
                        callbacks=[w.LoopStart()])\\
    .train_distributed({{"model_name": "mlp", "hidden_sizes": list(w.HIDDEN)}}, w.data(),
                       nodes={nodes})
print(json.dumps({{k: r[k] for k in ("samples_per_second", "final_loss", "train_time_s", "steps",
                                     "peak_memory_per_worker_bytes")}}))
"""
#: The general paths on the reference workload, nodes=2: dict samples read one at a time into
#: a model called with keywords, and the tensors through a user DataLoader(num_workers=2).
GENERAL = """
import json
from torch.utils.data import DataLoader, TensorDataset
from ai_distributed_training import DistributedTraining
from bench import workload as w
model, data = {inputs}
r = DistributedTraining(epochs=w.EPOCHS, batch_size=w.GLOBAL_BATCH, learning_rate=w.LR,
                        seed=w.SEED, validation_split=0.0, runs_dir=None, max_restarts=0,
                        callbacks=[w.LoopStart()])\
    .train_distributed(model, data, nodes=2)
print(json.dumps({{k: r[k] for k in ("samples_per_second", "final_loss", "train_time_s")}}))
"""
DICT_BATCHES = "w.DictMLP, w.DictRows()"
USER_LOADER = "w.model, DataLoader(TensorDataset(*w.data()), batch_size=1024, num_workers=2)"


def run_once(command: list[str], tries: int = 2) -> tuple[dict[str, Any], float]:
    """One run's printed figures and wall time; a failed run is retried once (and reported):
    torch's gloo teardown aborts a process now and then, in the hand-written baseline too.
    A run that marks its loop's start (``workload.mark_loop_start``) gets ``to_loop_s``: the
    seconds from the command's start to its first step."""
    with tempfile.TemporaryDirectory() as tmp:
        mark = Path(tmp) / "loop-start"
        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            LOOP_START_FILE: str(mark),
        }
        launched, started = time.time(), time.perf_counter()
        proc = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            if tries > 1:
                print(f"(retrying a failed run of {command[-1][:40]!r})", file=sys.stderr)
                return run_once(command, tries - 1)
            raise RuntimeError(f"{command} failed:\n{proc.stderr[-2000:]}")
        last = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
        figures: dict[str, Any] = json.loads(last)
        if mark.exists():
            figures["to_loop_s"] = float(mark.read_text()) - launched
    return figures, wall


def run_interleaved(
    cases: dict[str, list[str]], repeats: int
) -> dict[str, list[tuple[dict[str, Any], float]]]:
    """Every case's runs (figures, wall time), ``repeats`` rounds of one run per case in
    turn: noise hits every variant alike."""
    results: dict[str, list[tuple[dict[str, Any], float]]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, command in cases.items():
            results[name].append(run_once(command))
    return results

"""``python -m bench.sharded_memory``: a model bigger than one worker, trained with no process
ever holding it whole.

A factory builds a stack of ``Linear(width, width)`` layers (default 30 x 4096 x 4096: 503M
parameters, 2.0 GB in fp32); FSDP trains it at 4 workers (SGD, a few steps) with
``result_weights="safetensors"``. Printed, against the full weights' bytes: each worker's peak
RSS and a worker's peak with a tiny model (what a worker costs anyway), the caller's peak RSS,
and whether the export, loaded into a fresh model in one process, gives the validation loss the
sharded model computed. The suite runs the same at a small size
(``tests/distributed/test_sharded_results.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import ROOT

CLASSES, SAMPLES, VALIDATION = 4, 64, 32
SCRIPT = """
import json, sys
from functools import partial
import torch
from ai_distributed_training import DistributedTraining
from ai_distributed_training.host import peak_rss_bytes
from bench.sharded_memory import data, stack
width, layers, nodes, runs = {width}, {layers}, {nodes}, {runs!r}
train, val = data(width)
result = DistributedTraining(
    epochs=1, batch_size=16, optimizer="sgd", momentum=0.0, learning_rate=0.01, runs_dir=runs,
    validation_data=val, fsdp_blocks=["Linear"], result_weights="safetensors", max_restarts=0,
).train_distributed(partial(stack, width, layers), train, nodes=nodes, strategy="fsdp")
print(json.dumps({{
    "caller_peak": peak_rss_bytes(),  # VmHWM: ru_maxrss would include this test's parent
    "peaks": result["peak_memory_per_worker_bytes"],
    "weights_dir": result["weights_dir"],
    "val_loss": result["history"][-1]["val_loss"],
    "seconds": result["train_time_s"],
}}))
"""


def stack(width: int, layers: int) -> nn.Module:
    """``layers`` Linear(width, width) + ReLU, then a Linear to the classes."""
    blocks: list[nn.Module] = []
    for _ in range(layers):
        blocks += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*blocks, nn.Linear(width, CLASSES))


def small_model() -> nn.Module:
    """A small model for tests of the result's forms (6 features, 2 classes)."""
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def data(width: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
    """Training and validation tensors (inputs, class labels)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES + VALIDATION, width, generator=g)
    y = torch.randint(0, CLASSES, (SAMPLES + VALIDATION,), generator=g)
    return (x[:SAMPLES], y[:SAMPLES]), (x[SAMPLES:], y[SAMPLES:])


def train(width: int, layers: int, nodes: int, runs: str) -> dict[str, Any]:
    """One job in a fresh interpreter (its own peak RSS): the printed figures."""
    code = SCRIPT.format(width=width, layers=layers, nodes=nodes, runs=runs)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def export_loss(weights_dir: str, width: int, layers: int) -> float:
    """The validation loss of the export, loaded into a fresh model in this process."""
    from ai_distributed_training.training.export import load_export

    model = stack(width, layers)
    model.load_state_dict(load_export(Path(weights_dir)))
    x, y = data(width)[1]
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def measure(width: int, layers: int, nodes: int, runs: str) -> dict[str, Any]:
    """The big job, a tiny one (a worker's own cost), and the export checked; the runs'
    directories (the export too) go under ``runs``."""
    full = (layers * (width * width + width) + width * CLASSES + CLASSES) * 4  # fp32 bytes
    tiny = train(16, 1, nodes, runs)
    big = train(width, layers, nodes, runs)
    loaded = export_loss(big["weights_dir"], width, layers)
    return {
        "full_bytes": full,
        "tiny_peaks": tiny["peaks"],
        "tiny_caller_peak": tiny["caller_peak"],
        **big,
        "export_val_loss": loaded,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--nodes", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as runs:
        out = measure(args.width, args.layers, args.nodes, runs)
    gb = 1e9
    print(f"full weights: {out['full_bytes'] / gb:.2f} GB "
          f"({out['full_bytes'] // 4 / 1e6:.0f}M parameters), {args.nodes} workers")  # fmt: skip
    print("| worker | peak RSS GB | / full weights | tiny-model worker peak GB |")
    print("|---|---|---|---|")
    for rank, (peak, tiny) in enumerate(zip(out["peaks"], out["tiny_peaks"], strict=True)):
        print(f"| {rank} | {peak / gb:.2f} | {peak / out['full_bytes']:.2f} | {tiny / gb:.2f} |")
    print(f"caller peak RSS: {out['caller_peak'] / gb:.2f} GB (with a tiny model: "
          f"{out['tiny_caller_peak'] / gb:.2f} GB); training {out['seconds']:.1f} s")  # fmt: skip
    print(f"validation loss: sharded model {out['val_loss']:.6f}, "
          f"export loaded in one process {out['export_val_loss']:.6f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

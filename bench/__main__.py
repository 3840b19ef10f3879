"""``python -m bench``: throughput of train_distributed against two baselines, one table.

Every variant runs from a fresh interpreter (so wall time includes start-up), repeats are
interleaved (A B C A B C ...) and the table shows medians and ratios from this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = """
import json
from ai_distributed_training import DistributedTraining
from bench import workload as w
r = DistributedTraining(epochs=w.EPOCHS, batch_size=w.GLOBAL_BATCH, learning_rate=w.LR,
                        seed=w.SEED, validation_split=0.0, runs_dir=None, max_restarts=0)\\
    .train_distributed({{"model_name": "mlp", "hidden_sizes": list(w.HIDDEN)}}, w.data(),
                       nodes={nodes})
print(json.dumps({{"samples_per_second": r["samples_per_second"], "final_loss": r["final_loss"]}}))
"""


def variants(nodes: list[int]) -> dict[str, list[str]]:
    py = sys.executable
    torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    out = {f"train_distributed nodes={n}": [py, "-c", OURS.format(nodes=n)] for n in nodes}
    out["hand-written torchrun DDP, 2 procs"] = [*torchrun, "bench/ddp_baseline.py"]
    out["single process, all cores"] = [py, "bench/single_process.py"]
    return out


def run_once(command: list[str]) -> tuple[dict[str, float], float]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{proc.stderr[-2000:]}")
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    return json.loads(last), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    cases = variants(args.nodes)
    results: dict[str, list[tuple[dict[str, float], float]]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, command in cases.items():  # interleaved: noise hits every variant alike
            results[name].append(run_once(command))
    single = statistics.median(
        r["samples_per_second"] for r, _ in results["single process, all cores"]
    )
    handmade = statistics.median(
        r["samples_per_second"] for r, _ in results["hand-written torchrun DDP, 2 procs"]
    )
    print(
        f"{'variant':38} {'samples/s':>10} {'x single':>9} {'x torchrun':>10} "
        f"{'wall s':>7} {'final loss':>10}"
    )
    for name, runs in results.items():
        sps = statistics.median(r["samples_per_second"] for r, _ in runs)
        wall = statistics.median(w for _, w in runs)
        loss = statistics.median(r["final_loss"] for r, _ in runs)
        print(
            f"{name:38} {sps:10.0f} {sps / single:9.2f} {sps / handmade:10.2f} "
            f"{wall:7.1f} {loss:10.4f}"
        )
    print(
        f"(medians of {args.repeats} interleaved runs; samples/s counts the training loop only,"
        " wall time the whole command from a fresh interpreter)"
    )


if __name__ == "__main__":
    main()

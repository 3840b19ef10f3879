"""``python -m bench.plan_accuracy``: the planner's predictions against real runs, here.

Calibrates this machine afresh, plans the reference workload (see :mod:`bench.workload`) for
N = 1, 2 and 4, then trains it for real at each N (fresh interpreters, repeats interleaved,
medians) and prints predicted versus measured step time and peak memory per worker (the
largest resident set of any worker). The goal: every prediction within +-25%.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from ai_distributed_training import DistributedTraining
from ai_distributed_training.planner.calibration import calibrate
from bench import workload as w
from bench.common import OURS, run_once

TOLERANCE = 0.25


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    profile = calibrate()
    plan = DistributedTraining(
        epochs=w.EPOCHS, batch_size=w.GLOBAL_BATCH, learning_rate=w.LR, validation_split=0.0
    ).plan({"model_name": "mlp", "hidden_sizes": list(w.HIDDEN)}, w.data(), args.nodes, profile)
    predicted = {r.nodes: r for r in plan.rows}
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.nodes}
    for _ in range(args.repeats):
        for n in args.nodes:  # interleaved: noise hits every node count alike
            runs[n].append(run_once([sys.executable, "-c", OURS.format(nodes=n)])[0])
    print(f"hardware: {profile.name}")
    print(
        f"{'nodes':>5} {'step ms pred':>12} {'measured':>9} {'ratio':>6} "
        f"{'peak MB/wkr pred':>16} {'measured':>9} {'ratio':>6}"
    )
    worst = 0.0
    for n in args.nodes:
        step = statistics.median(r["train_time_s"] / r["steps"] for r in runs[n])
        memory = statistics.median(max(r["peak_memory_per_worker_bytes"]) for r in runs[n])
        row = predicted[n]
        step_ratio = row.step_time_s / step
        mem_ratio = row.memory_ddp_bytes / memory
        worst = max(worst, abs(step_ratio - 1), abs(mem_ratio - 1))
        print(
            f"{n:>5} {row.step_time_s * 1e3:>12.2f} {step * 1e3:>9.2f} {step_ratio:>6.2f} "
            f"{row.memory_ddp_bytes / 1e6:>16.0f} {memory / 1e6:>9.0f} {mem_ratio:>6.2f}"
        )
    verdict = "PASS" if worst <= TOLERANCE else "FAIL"
    print(
        f"{verdict}: largest error {worst:.0%} (goal: within {TOLERANCE:.0%}); medians of "
        f"{args.repeats} interleaved runs"
    )
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench.simulate_accuracy``: the cluster simulation against real runs, here.

For each strategy (ddp, fsdp, tp, fsdp+tp) and world size (2 and 4), simulates every rank of
the job on the fake backend (:func:`ai_distributed_training.simulate.simulate`), then runs
the same steps for real on gloo (:func:`~ai_distributed_training.simulate.measure`: the same
code and counters in real processes) and prints, per rank, simulated peak memory against the
peak resident memory the real step added, and the collectives (count and bytes) of both.
The goals (issue 31): memory within 15%, collectives equal.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from ai_distributed_training import DistributedTraining
from ai_distributed_training.planner.profiles import PRESETS
from ai_distributed_training.simulate import measure, simulate

TOLERANCE = 0.15
MLP = {"model_name": "sim-mlp", "hidden_sizes": [2048, 2048, 2048]}
TABLE = {"samples": 4000, "features": 1024}
GPT = {"model_name": "sim-gpt", "architecture": "transformer", "d_model": 512, "layers": 4}
TOKENS = {"samples": 512, "seq_len": 128, "vocab_size": 4096}


def _case(strategy: str) -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
    """Model, data and settings: an MLP for ddp and fsdp, a decoder (it has a tensor-parallel
    plan) for tp and fsdp+tp."""
    if strategy in ("ddp", "fsdp"):
        return MLP, TABLE, {"strategy": strategy, "batch_size": 256}
    extra = {"tp_size": 2} if strategy == "fsdp+tp" else {}
    return GPT, TOKENS, {"strategy": strategy, "batch_size": 16, **extra}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--strategies", nargs="+", default=["ddp", "fsdp", "tp", "fsdp+tp"])
    parser.add_argument("--nodes", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    print(
        f"{'strategy':>8} {'nodes':>5} {'rank':>4} {'sim MB':>8} {'real MB':>8} {'ratio':>6} "
        f"{'colls sim':>9} {'real':>5} {'bytes equal':>11}"
    )
    worst, unequal = 0.0, 0
    for strategy in args.strategies:
        model, data, settings = _case(strategy)
        resolved = DistributedTraining(**settings).resolve_settings()
        for n in args.nodes:
            if strategy == "fsdp+tp" and n < 4:
                continue  # two dimensions need 2 x 2 workers at least
            sim = simulate(
                model,
                data,
                resolved,
                nodes=[n],
                ranks=range(n),
                hardware=PRESETS["cpu-cluster-25g"],
            )
            real = measure(model, data, resolved, nodes=n)
            for rank in range(n):
                s, m = sim.rank(n, rank).facts, real[rank]
                if s.error or m.error or m.measured_bytes is None:
                    print(f"{strategy:>8} {n:>5} {rank:>4} failed: {s.error or m.error}")
                    unequal += 1
                    continue
                ratio = s.memory["total"] / m.measured_bytes
                same = Counter(s.collectives) == Counter(m.collectives)
                worst, unequal = max(worst, abs(ratio - 1)), unequal + (not same)
                print(
                    f"{strategy:>8} {n:>5} {rank:>4} {s.memory['total'] / 1e6:>8.1f} "
                    f"{m.measured_bytes / 1e6:>8.1f} {ratio:>6.2f} {len(s.collectives):>9} "
                    f"{len(m.collectives):>5} {'yes' if same else 'NO':>11}"
                )
    ok = worst <= TOLERANCE and not unequal
    print(
        f"{'PASS' if ok else 'FAIL'}: largest memory error {worst:.0%} (goal: within "
        f"{TOLERANCE:.0%}); {unequal} rank(s) whose collectives differ or failed (goal: 0)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench.ray_launcher``: the Ray launcher against torch elastic (our default) on
the reference workload, nodes=2: time to train (samples/s) and the whole call's wall time,
when the call starts a local Ray instance and when Ray is up already (a second call).

Each variant runs in a fresh interpreter; repeats are interleaved; medians and ratios against
the elastic launcher measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from bench.common import run_interleaved

CALLS = """
import json, time
from ai_distributed_training import DistributedTraining
from bench import workload as w
trainer = DistributedTraining(epochs=w.EPOCHS, batch_size=w.GLOBAL_BATCH, learning_rate=w.LR,
                              seed=w.SEED, validation_split=0.0, runs_dir=None, max_restarts=0)
for call in range({calls}):
    started = time.perf_counter()
    r = trainer.train_distributed({{"model_name": "mlp", "hidden_sizes": list(w.HIDDEN)}},
                                  w.data(), nodes=2, launcher="{launcher}")
    print(json.dumps({{"samples_per_second": r["samples_per_second"],
                      "call_s": time.perf_counter() - started, "final_loss": r["final_loss"]}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    py = sys.executable
    cases = {
        "elastic (default launcher)": [py, "-c", CALLS.format(calls=1, launcher="elastic")],
        "ray, the call starts Ray": [py, "-c", CALLS.format(calls=1, launcher="ray")],
        "ray, second call (Ray up)": [py, "-c", CALLS.format(calls=2, launcher="ray")],
    }
    results = run_interleaved(cases, args.repeats)  # the last printed line: the last call
    base = results["elastic (default launcher)"]
    base_sps = statistics.median(r["samples_per_second"] for r, _ in base)
    base_call = statistics.median(r["call_s"] for r, _ in base)
    print(
        f"{'nodes=2, reference workload':30} {'samples/s':>10} {'x elastic':>9} {'call s':>7} "
        f"{'x elastic':>9} {'final loss':>10}"
    )
    for name, runs in results.items():
        sps = statistics.median(r["samples_per_second"] for r, _ in runs)
        call = statistics.median(r["call_s"] for r, _ in runs)
        loss = statistics.median(r["final_loss"] for r, _ in runs)
        print(
            f"{name:30} {sps:10.0f} {sps / base_sps:9.2f} {call:7.1f} {call / base_call:9.2f} "
            f"{loss:10.4f}"
        )
    print(f"(medians of {args.repeats} interleaved runs; call s: train_distributed's wall time)")


if __name__ == "__main__":
    main()

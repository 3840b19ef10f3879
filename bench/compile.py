"""``python -m bench.compile``: what ``compile=True`` (torch.compile, inductor) buys on this
machine, nodes=2, for the reference MLP and the built-in transformer.

Each run trains 3 epochs and times each (rank 0, a callback): the steady state is the faster of
epochs 2 and 3 (compiled by then), the compile time what epoch 1 took beyond it (compilation,
and recompiles for the last partial batch and for evaluation). Inductor caches what it compiles
on disk: the first compile ever on a machine takes longer than the cached figure shown here.
Fresh interpreters, repeats interleaved, medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from bench.common import run_interleaved

RUN = """
import json, tempfile
from ai_distributed_training import DistributedTraining
from bench import workload as w
model, data, batch, samples = {workload}
times = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
r = DistributedTraining(epochs=3, batch_size=batch, seed=0, validation_split=0.0, runs_dir=None,
                        max_restarts=0, compile={compile}, callbacks=[w.EpochTimer(times)]
                        ).train_distributed(model, data, nodes=2)
epochs = json.load(open(times))
print(json.dumps({{"first": epochs[0], "steady": sorted(epochs[1:])[0], "samples": samples,
                  "final_loss": r["final_loss"]}}))
"""
WORKLOADS = {
    "reference MLP": '{"model_name": "mlp", "hidden_sizes": list(w.HIDDEN)}, w.data(), '
    "w.GLOBAL_BATCH, w.SAMPLES",
    "transformer (d128, 2 blocks, 64 tokens)": '{"model_name": "gpt", "architecture": '
    '"transformer"}, {"samples": 2048, "seq_len": 64, "vocab_size": 256}, 64, 2048',
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = {
        f"{name}|{compiled}": [sys.executable, "-c", RUN.format(workload=code, compile=compiled)]
        for name, code in WORKLOADS.items()
        for compiled in (False, True)
    }
    results = run_interleaved(cases, args.repeats)
    print(
        f"{'nodes=2':40} {'compile':>7} {'samples/s':>10} {'x eager':>7} {'compile s':>9} "
        f"{'final loss':>10}"
    )
    for name in WORKLOADS:
        eager = 0.0
        for compiled in (False, True):
            runs = [r for r, _ in results[f"{name}|{compiled}"]]
            steady = statistics.median(r["steady"] for r in runs)
            rate = statistics.median(r["samples"] for r in runs) / steady
            eager = eager or rate
            overhead = statistics.median(r["first"] - r["steady"] for r in runs)
            loss = statistics.median(r["final_loss"] for r in runs)
            print(
                f"{name:40} {'on' if compiled else 'off':>7} {rate:10.0f} {rate / eager:7.2f} "
                f"{overhead:9.1f} {loss:10.4f}"
            )
    print(
        f"(medians of {args.repeats} interleaved runs; samples/s: the faster of epochs 2-3; "
        "compile s: epoch 1 beyond it, compile off: the first epoch's own extra)"
    )


if __name__ == "__main__":
    main()

"""``python -m bench.ray_launcher``: the Ray launcher against torch elastic (our default) on
the reference workload, nodes=2: time to train (samples/s) and the whole call's wall time,
when the call starts a local Ray instance and when Ray is up already (a second call), and with
a checkpoint every 20 steps (each one registered with Ray through ``ray.train.report``).

Each variant runs in a fresh interpreter; repeats are interleaved; medians and ratios against
the elastic launcher measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from bench.common import run_interleaved

CALLS = """
import json, tempfile, time
from ai_distributed_training import DistributedTraining
from bench import workload as w
for call in range({calls}):
    with tempfile.TemporaryDirectory() as ckpt:  # each call its own checkpoints, removed after
        checkpoints = {{"checkpoint_every": {every}, "checkpoint_dir": ckpt}} if {every} else {{}}
        trainer = DistributedTraining(epochs=w.EPOCHS, batch_size=w.GLOBAL_BATCH,
                                      learning_rate=w.LR, seed=w.SEED, validation_split=0.0,
                                      runs_dir=None, max_restarts=0, **checkpoints)
        started = time.perf_counter()
        r = trainer.train_distributed({{"model_name": "mlp", "hidden_sizes": list(w.HIDDEN)}},
                                      w.data(), nodes=2, launcher="{launcher}")
        print(json.dumps({{"samples_per_second": r["samples_per_second"],
                          "call_s": time.perf_counter() - started,
                          "final_loss": r["final_loss"]}}))
"""
#: Each variant: (calls in one interpreter, the last one measured; launcher; checkpoint_every,
#: 0 for none; the elastic variant it is compared with).
VARIANTS = {
    "elastic (default launcher)": (1, "elastic", 0, "elastic (default launcher)"),
    "ray, the call starts Ray": (1, "ray", 0, "elastic (default launcher)"),
    "ray, second call (Ray up)": (2, "ray", 0, "elastic (default launcher)"),
    "elastic, checkpoint every 20": (1, "elastic", 20, "elastic, checkpoint every 20"),
    "ray, Ray up, checkpoint every 20": (2, "ray", 20, "elastic, checkpoint every 20"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = {
        name: [sys.executable, "-c", CALLS.format(calls=calls, launcher=launcher, every=every)]
        for name, (calls, launcher, every, _) in VARIANTS.items()
    }
    results = run_interleaved(cases, args.repeats)  # the last printed line: the last call

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r, _ in results[name])

    print(
        f"{'nodes=2, reference workload':32} {'samples/s':>10} {'x elastic':>9} {'call s':>7} "
        f"{'x elastic':>9} {'final loss':>10}"
    )
    for name, (*_, base) in VARIANTS.items():
        sps, call = median(name, "samples_per_second"), median(name, "call_s")
        print(
            f"{name:32} {sps:10.0f} {sps / median(base, 'samples_per_second'):9.2f} "
            f"{call:7.1f} {call / median(base, 'call_s'):9.2f} {median(name, 'final_loss'):10.4f}"
        )
    print(
        f"(medians of {args.repeats} interleaved runs; call s: train_distributed's wall time; "
        "x elastic: against the elastic variant with the same checkpoints)"
    )


if __name__ == "__main__":
    main()

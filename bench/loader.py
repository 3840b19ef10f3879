"""``python -m bench.loader``: a user DataLoader with a CPU-heavy ``__getitem__`` and
``num_workers=2``, at nodes=2, against the hand-written torchrun + DDP + DataLoader script on the
same data (``bench/loader_ddp_baseline.py``); our run with ``num_workers=0`` shows what the
loader processes buy. Interleaved repeats, medians and ratios from this one run."""

from __future__ import annotations

import argparse
import statistics
import sys

from bench.common import run_interleaved

OURS = """
import json
from torch.utils.data import DataLoader
from ai_distributed_training import DistributedTraining
from bench import loader_workload as w
loader = DataLoader(w.AugmentedImages(), batch_size=w.GLOBAL_BATCH, shuffle=True,
                    num_workers={num_workers})
r = DistributedTraining(epochs=w.EPOCHS, learning_rate=w.LR, seed=w.SEED, validation_split=0.0,
                        runs_dir=None, max_restarts=0).train_distributed(w.model, loader, nodes=2)
print(json.dumps({{k: r[k] for k in ("samples_per_second", "final_loss")}}))
"""


def variants() -> dict[str, list[str]]:
    py = sys.executable
    torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return {
        "train_distributed DataLoader(num_workers=2)": [py, "-c", OURS.format(num_workers=2)],
        "hand-written torchrun DDP + DataLoader(2)": [*torchrun, "bench/loader_ddp_baseline.py"],
        "train_distributed DataLoader(num_workers=0)": [py, "-c", OURS.format(num_workers=0)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = variants()
    results = run_interleaved(cases, args.repeats)
    baseline = statistics.median(
        r["samples_per_second"] for r, _ in results["hand-written torchrun DDP + DataLoader(2)"]
    )
    print(
        f"{'variant (nodes=2)':44} {'samples/s':>10} {'x torchrun':>10} {'wall s':>7} {'loss':>7}"
    )
    for name, runs in results.items():
        sps = statistics.median(r["samples_per_second"] for r, _ in runs)
        wall = statistics.median(w for _, w in runs)
        loss = statistics.median(r["final_loss"] for r, _ in runs)
        print(f"{name:44} {sps:10.0f} {sps / baseline:10.2f} {wall:7.1f} {loss:7.4f}")
    print(f"(medians of {args.repeats} interleaved runs; samples/s counts the training loop only)")


if __name__ == "__main__":
    main()

"""``python -m bench.fsdp_memory``: per-worker memory of a ~100M-parameter model, DDP vs FSDP.

A GPT-style decoder (d_model 768, 12 blocks, vocabulary 8192: ~98M parameters) trains two steps
on synthetic tokens with AdamW, once per (strategy, workers) for 2 and 4 workers, each in a
fresh interpreter. Per worker, two figures:

* model state: the bytes of that rank's parameters, gradients and optimizer state after the
  last step (its shards under FSDP), counted from the tensors themselves;
* peak RSS: the worker process's peak resident memory (activations, buffers, torch included).

Goal: FSDP's model state per worker at most 0.6 x DDP's at 2 workers and 0.35 x at 4 (1/N is
the ideal). Run on CPU with gloo here; on GPUs pass ``--gpus``.
"""

from __future__ import annotations

import argparse
import sys

from bench.common import run_once

GPT = {"model_name": "gpt-100m", "architecture": "transformer", "d_model": 768, "layers": 12,
       "heads": 12}  # fmt: skip
TOKENS = {"seq_len": 64, "vocab_size": 8192}
GOALS = {2: 0.6, 4: 0.35}
SCRIPT = """
import json
from ai_distributed_training import DistributedTraining
r = DistributedTraining(epochs=1, batch_size={batch}, validation_split=0.0, runs_dir=None,
                        max_restarts=0, use_gpus={gpus}).train_distributed(
    {model}, {data}, nodes={nodes}, strategy={strategy!r})
print(json.dumps({{k: r[k] for k in ("model_state_bytes_per_worker",
                                     "peak_memory_per_worker_bytes", "samples_per_second")}}))
"""
GIB = 1 << 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    parser.add_argument("--gpus", action="store_true")
    args = parser.parse_args()
    data = {**TOKENS, "samples": 2 * args.batch}  # two optimizer steps
    rows, ok = [], True
    for n in args.workers:
        figures = {}
        for strategy in ("ddp", "fsdp"):
            code = SCRIPT.format(batch=args.batch, gpus=args.gpus, model=GPT, data=data,
                                 nodes=n, strategy=strategy)  # fmt: skip
            out, _ = run_once([sys.executable, "-c", code])
            figures[strategy] = (
                max(out["model_state_bytes_per_worker"]),
                max(out["peak_memory_per_worker_bytes"]),
            )
        ratio = figures["fsdp"][0] / figures["ddp"][0]
        ok = ok and ratio <= GOALS.get(n, 1.4 / n)
        rows.append((n, figures, ratio))
    print("| workers | DDP model state | FSDP model state | FSDP/DDP | goal | "
          "DDP peak RSS | FSDP peak RSS |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for n, figures, ratio in rows:
        (ddp_state, ddp_rss), (fsdp_state, fsdp_rss) = figures["ddp"], figures["fsdp"]
        print(
            f"| {n} | {ddp_state / GIB:.2f} GiB | {fsdp_state / GIB:.2f} GiB | {ratio:.2f} | "
            f"<= {GOALS.get(n, 1.4 / n):.2f} | {ddp_rss / GIB:.2f} GiB | {fsdp_rss / GIB:.2f} GiB |"
        )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

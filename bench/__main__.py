"""``python -m bench``: throughput of train_distributed against two baselines, one table.

Every variant runs from a fresh interpreter (so wall time includes start-up), repeats are
interleaved (A B C A B C ...) and the table shows medians and ratios from this one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from bench.common import DICT_BATCHES, GENERAL, OURS, USER_LOADER, run_interleaved


def variants(nodes: list[int]) -> dict[str, list[str]]:
    py = sys.executable
    torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    out = {f"train_distributed nodes={n}": [py, "-c", OURS.format(nodes=n)] for n in nodes}
    out["nodes=2, dict batches (Dataset)"] = [py, "-c", GENERAL.format(inputs=DICT_BATCHES)]
    out["nodes=2, DataLoader(num_workers=2)"] = [py, "-c", GENERAL.format(inputs=USER_LOADER)]
    out["hand-written torchrun DDP, 2 procs"] = [*torchrun, "bench/ddp_baseline.py"]
    out["best hand-written DDP, 2 procs"] = [*torchrun, "bench/best_ddp.py"]
    out["single process, all cores"] = [py, "bench/single_process.py"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    cases = variants(args.nodes)
    results = run_interleaved(cases, args.repeats)
    single = statistics.median(
        r["samples_per_second"] for r, _ in results["single process, all cores"]
    )
    handmade = statistics.median(
        r["samples_per_second"] for r, _ in results["hand-written torchrun DDP, 2 procs"]
    )
    best = statistics.median(
        r["samples_per_second"] for r, _ in results["best hand-written DDP, 2 procs"]
    )
    print(
        f"{'variant':38} {'samples/s':>10} {'x single':>9} {'x torchrun':>10} {'x best':>7} "
        f"{'wall s':>7} {'outside s':>9} {'1st step s':>10} {'final loss':>10}"
    )
    for name, runs in results.items():
        sps = statistics.median(r["samples_per_second"] for r, _ in runs)
        wall = statistics.median(w for _, w in runs)  # the whole command
        # Start-up and teardown: the whole command's time outside the training loop.
        outside = statistics.median(w - r["train_time_s"] for r, w in runs)
        # From the command's start to the training loop's (its first step's).
        to_loop = statistics.median(r["to_loop_s"] for r, _ in runs)
        loss = statistics.median(r["final_loss"] for r, _ in runs)
        print(
            f"{name:38} {sps:10.0f} {sps / single:9.2f} {sps / handmade:10.2f} "
            f"{sps / best:7.2f} {wall:7.1f} {outside:9.1f} {to_loop:10.1f} {loss:10.4f}"
        )
    print(
        f"(medians of {args.repeats} interleaved runs; samples/s counts the training loop only,"
        " wall time the whole command from a fresh interpreter, outside s the part of it outside"
        " the training loop: start-up and teardown, 1st step s the time from the command's start"
        " to the first step's)"
    )


if __name__ == "__main__":
    main()

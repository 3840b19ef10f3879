"""``python -m bench.memory``: the memory of 4-worker local jobs on large data, one table.

Two cases, each run from a fresh interpreter while this process samples the memory of that
interpreter (the caller) and of every process below it (the workers) ten times a second:

1. **In-memory data**: the caller builds a 2 GiB float32 ``(X, y)`` and trains on it with
   ``nodes=4``. Measured: the peak of the workers' summed PSS (proportional set size: a page
   shared by k processes counts 1/k in each, so shared data counts once). Goal: at most
   1.5 x (one copy of the data + one worker's own footprint), the footprint being the peak PSS
   of the single worker of a ``nodes=1`` job on tiny data, measured in the same run. Workers
   that each copied the data would need about 4 x the data.
2. **Data on disk**: a ``.npy`` table twice the workers' memory budget (default 4 x 512
   MiB of budget, so a 4 GiB file), trained on with ``nodes=4``. Goal: every worker's peak
   resident set (``VmHWM``, mapped file pages included) stays within its budget.

The caller's own copy of the in-memory data is its user's, made before the call; the table
prints it apart. The staged file the workers map lives in the page cache on disk, which is
what their PSS counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ROOT

FEATURES = 1024
MODEL = '{"model_name": "mlp", "hidden_sizes": [64]}'
TRAIN = f"""
import json, sys
import torch
from ai_distributed_training import DistributedTraining
rows = int(sys.argv[1])
if sys.argv[2] == "memory":
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, {FEATURES}, generator=g)
    data = (x, (x[:, 0] > 0).long())
else:
    data = sys.argv[2]
print("READY", flush=True)
r = DistributedTraining(epochs=1, batch_size=1024, validation_split=0.0, runs_dir=None,
                        max_restarts=0).train_distributed({MODEL}, data, nodes=int(sys.argv[3]))
print(json.dumps({{k: r[k] for k in ("samples_per_second", "peak_memory_per_worker_bytes")}}))
"""
MIB = 1 << 20


def _kib_field(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except OSError:  # the process has just ended
        pass
    return 0


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid]
        found += children
        frontier += children
    return found


def measure(rows: int, data: str, nodes: int) -> dict[str, Any]:
    """Run one job in a fresh interpreter; peak PSS of its workers (summed) and of the caller."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-c", TRAIN, str(rows), data, str(nodes)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    peaks = {"workers_pss": 0, "caller_pss": 0, "caller_ready_pss": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            workers = sum(
                _kib_field(f"/proc/{p}/smaps_rollup", "Pss:") for p in _descendants(proc.pid)
            )
            caller = _kib_field(f"/proc/{proc.pid}/smaps_rollup", "Pss:")
            peaks["workers_pss"] = max(peaks["workers_pss"], workers)
            peaks["caller_pss"] = max(peaks["caller_pss"], caller)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        if line.startswith("READY"):
            peaks["caller_ready_pss"] = _kib_field(f"/proc/{proc.pid}/smaps_rollup", "Pss:")
        lines.append(line)
    done.set()
    sampler.join()
    if proc.wait() != 0:
        raise RuntimeError(f"the {data} job failed (exit {proc.returncode})")
    result = json.loads([line for line in lines if line.startswith("{")][-1])
    return {**peaks, **result}


def write_table(path: Path, size: int) -> int:
    """A random float32 ``.npy`` table of about ``size`` bytes, written in chunks; its rows."""
    rows = size // ((FEATURES + 1) * 4)
    table = np.lib.format.open_memmap(path, "w+", np.float32, (rows, FEATURES + 1))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 65536):
        block = rng.standard_normal((min(65536, rows - start), FEATURES), dtype=np.float32)
        table[start : start + len(block), :-1] = block
        table[start : start + len(block), -1] = block[:, 0] > 0
    table.flush()
    del table
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-gib", type=float, default=2.0, help="in-memory data size")
    parser.add_argument("--budget-mib", type=int, default=512, help="memory budget per worker")
    parser.add_argument("--nodes", type=int, default=4)
    args = parser.parse_args()
    rows = int(args.data_gib * (1 << 30)) // (FEATURES * 4)
    data_bytes = rows * FEATURES * 4 + rows * 8  # X float32 + y int64
    footprint = measure(4096, "memory", 1)["workers_pss"]
    in_memory = measure(rows, "memory", args.nodes)
    bound = 1.5 * (data_bytes + footprint)
    with tempfile.TemporaryDirectory(prefix="adt-bench-mem-", dir=ROOT) as tmp:
        file_size = 2 * args.nodes * args.budget_mib * MIB
        path = Path(tmp) / "table.npy"
        file_rows = write_table(path, file_size)
        mapped = measure(file_rows, str(path), args.nodes)
    worst_rss = max(mapped["peak_memory_per_worker_bytes"])
    budget = args.budget_mib * MIB
    print(f"one worker's own footprint (PSS, nodes=1, tiny data): {footprint / MIB:.0f} MiB")
    print(f"| case (nodes={args.nodes}) | data | measured | goal | ratio | caller | samples/s |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| in-memory (X, y) | {data_bytes / MIB:.0f} MiB | workers' PSS "
        f"{in_memory['workers_pss'] / MIB:.0f} MiB | <= 1.5 x (data + footprint) = "
        f"{bound / MIB:.0f} MiB | {in_memory['workers_pss'] / bound:.2f} | "
        f"{in_memory['caller_ready_pss'] / MIB:.0f} MiB with its data, peak "
        f"{in_memory['caller_pss'] / MIB:.0f} | {in_memory['samples_per_second']:.0f} |"
    )
    print(
        f"| .npy read from disk | {file_size / MIB:.0f} MiB (2 x {args.nodes} x "
        f"{args.budget_mib} MiB) | largest worker peak RSS {worst_rss / MIB:.0f} MiB | "
        f"<= {args.budget_mib} MiB per worker | {worst_rss / budget:.2f} | peak "
        f"{mapped['caller_pss'] / MIB:.0f} MiB | {mapped['samples_per_second']:.0f} |"
    )
    ok = in_memory["workers_pss"] <= bound and worst_rss <= budget
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

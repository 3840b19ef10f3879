"""The all-reduce half of ``--calibrate``: time gloo all-reduces between real processes.

Run as ``python -m ai_distributed_training.planner.calibration_worker OUT.json THREADS`` by the
elastic launcher (see :func:`~.calibration.calibrate`). Rank 0 writes the fitted ring-all-reduce
latency and bandwidth and the largest baseline footprint of a worker (a process that has joined
the group and taken one synchronized step of a tiny model: what every worker pays before its
model and data).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record

from ..host import exit_finished_worker, keep_freed_memory, peak_rss_bytes
from ..training.strategies import DDPStrategy
from .timing import PROBE_BATCH, PROBE_WIDTH, median_seconds, probe_loss, probe_net, train_step

#: Message sizes timed, in float32 elements: latency-bound up to bandwidth-bound.
SIZES = (1, 16_384, 262_144, 1_048_576)
#: 256^3 multiply-adds each: ~5 ms of compute on one core of the reference machine.
_MATMULS = 8


def _baseline_bytes() -> int:
    """Peak memory after one synchronized step of a tiny model (imports, gloo, optimizer
    machinery): what a worker holds before its own model and data."""
    net = nn.Linear(4, 2)
    opt = torch.optim.AdamW(net.parameters(), fused=True)
    net(torch.zeros(1, 4)).sum().backward()
    for p in net.parameters():
        dist.all_reduce(p.grad)
    opt.step()
    return peak_rss_bytes()


def _time_allreduce(numel: int, repeats: int = 15) -> float:
    """Median seconds of an all-reduce of ``numel`` floats issued right after ~5 ms of
    compute, as in training: the time includes waiting for the slowest rank and the cores'
    contention, which on a shared host cost more than the transfer itself."""
    tensor = torch.ones(numel)
    a = torch.randn(256, 256)
    for _ in range(3):
        dist.all_reduce(tensor)
    times = []
    for _ in range(repeats):
        dist.barrier()
        for _ in range(_MATMULS):
            a = torch.tanh(a @ a)
        started = time.perf_counter()
        dist.all_reduce(tensor)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _time_training(strategy: DDPStrategy, steps: int = 12) -> tuple[float, float]:
    """(seconds of a DDP training step without gradient sync, extra seconds with it) for the
    compute probe's MLP, wrapped by the trainer's own strategy: what contention and waiting for
    the slowest rank add on this host, which an idle all-reduce does not show."""
    net = strategy.wrap(probe_net())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
    x, y = torch.randn(PROBE_BATCH, PROBE_WIDTH), torch.zeros(PROBE_BATCH, dtype=torch.long)
    step = train_step(net, opt, probe_loss, x, y)
    medians = []
    for sync in (False, True):
        with contextlib.nullcontext() if sync else strategy.no_sync(net):
            for _ in range(3):
                step()
            dist.barrier()
            medians.append(median_seconds(step, steps))
    return medians[0], max(0.0, medians[1] - medians[0])


@record
def main() -> None:
    keep_freed_memory()  # as in a training worker
    n_threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    torch.set_num_threads(n_threads)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    try:
        n = dist.get_world_size()
        baseline = _baseline_bytes()
        strategy = DDPStrategy(dist.get_rank(), n, torch.device("cpu"))
        compute, sync = _time_training(strategy)
        strategy.close()  # now that the probe's locals are gone: DDP released while the group lives
        seconds = [_time_allreduce(numel) for numel in SIZES]
        # Least squares on t = 2(N-1) * latency + 2(N-1)/N * bytes / bandwidth.
        rows = np.array([[2 * (n - 1), 2 * (n - 1) / n * 4 * numel] for numel in SIZES])
        latency, inverse_bw = np.linalg.lstsq(rows, np.array(seconds), rcond=None)[0]
        found: list[dict[str, float]] = [{}] * n
        mine = {"baseline": baseline, "compute": compute, "sync": sync}
        dist.all_gather_object(found, mine)
        if dist.get_rank() == 0:
            out = {
                "link": {
                    "latency_s": max(float(latency), 1e-7),
                    "bandwidth_bytes_per_s": 1 / max(float(inverse_bw), 1e-15),
                },
                "baseline_bytes": max(f["baseline"] for f in found if f),
                "training_compute_s": max(f["compute"] for f in found if f),
                "training_sync_s": max(f["sync"] for f in found if f),
                "threads": n_threads,
                "seconds": dict(zip(map(str, SIZES), seconds, strict=True)),
            }
            Path(sys.argv[1]).write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_finished_worker()

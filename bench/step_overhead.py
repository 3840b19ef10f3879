"""``python -m bench.step_overhead``: the library's fixed cost per step, apart from compute.

A tiny model on tiny steps (32 samples a global batch), where what a step costs beyond
forward, backward, the gradient all-reduce and the optimizer shows: the library's loop
(``training.loop.train``, the rank code every launcher runs) against a bare loop over the same
batches (DDP with more than one rank, as the library's), alternating (A B A B ...), medians;
in one process, then on two ranks under torchrun (gloo, each pinned to its core, one thread).
The bookkeeping a step does besides (the non-finite gradient check, the stat vector behind the
metrics, the scheduler, the batch plan) is what the difference measures; one process shows it
without the noise of two processes sharing two cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ai_distributed_training.config import SyntheticDataSpec, TrainingSettings
from ai_distributed_training.config.sections import sections_of
from ai_distributed_training.data import make_synthetic
from ai_distributed_training.data.tensors import TensorReader
from ai_distributed_training.training.context import RankContext, RankData
from ai_distributed_training.training.loop import train
from ai_distributed_training.training.sharding import epoch_order, global_batch, rank_share
from ai_distributed_training.training.strategies import DDPStrategy

ROOT = Path(__file__).resolve().parents[1]
SAMPLES, FEATURES, GLOBAL_BATCH = 32_000, 16, 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # a rank under torchrun
        measure(args.repeats)
        return
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    print(f"{'':12} {'library us/step':>15} {'bare us/step':>13} {'overhead us':>12}")
    for nproc in (1, 2):
        ranks = [*torchrun, "--nproc-per-node", str(nproc), "-m", "bench.step_overhead"]
        command = [*ranks, "--worker", "--repeats", str(args.repeats)]
        subprocess.run(command, cwd=ROOT, env=env, check=True)
    print(
        f"({GLOBAL_BATCH} samples a global batch, {SAMPLES // GLOBAL_BATCH} steps a run, "
        f"medians of {args.repeats} alternating runs)"
    )


def measure(repeats: int) -> None:
    """On each rank: the library's loop and the bare loop, alternating; rank 0 prints."""
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, [cpus[rank % len(cpus)]])
    torch.set_num_threads(1)
    steps = SAMPLES // GLOBAL_BATCH
    ours, bare = [], []
    _library_loop(), _bare_loop()  # warm-up: imports, allocator, first-step settling
    for _ in range(repeats):
        ours.append(_library_loop() / steps)
        bare.append(_bare_loop() / steps)
    if rank == 0:
        a, b = statistics.median(ours) * 1e6, statistics.median(bare) * 1e6
        where = "1 process" if world == 1 else f"{world} ranks"
        print(f"{where:12} {a:15.0f} {b:13.0f} {a - b:12.0f}", flush=True)
    dist.destroy_process_group()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 2))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    return make_synthetic(SyntheticDataSpec(samples=SAMPLES, features=FEATURES, seed=3))


def _library_loop() -> float:
    """Seconds for one epoch through the library's loop (DDP, AdamW, per-step metrics), as
    the loop times its epochs (from the first step's start, without the set-up before it)."""
    x, y = _data()
    data = RankData(
        reader=TensorReader(x, y),
        task="classification",
        train_idx=torch.arange(SAMPLES),
        val_reader=None,
        val_idx=torch.arange(0),
    )
    settings = TrainingSettings(epochs=1, batch_size=GLOBAL_BATCH, validation_split=0.0)
    strategy = DDPStrategy(dist.get_rank(), dist.get_world_size(), torch.device("cpu"))
    result = train(_model(), data, RankContext.of(sections_of(settings), strategy=strategy))
    return result.train_time_s


def _bare_loop() -> float:
    """Seconds for the same epoch written by hand: DDP (more than one rank), fused AdamW, a
    loss sum."""
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = _data()
    net = DistributedDataParallel(_model()) if world > 1 else _model()  # as the library
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
    order = epoch_order(SAMPLES, 0, 0)
    loss_sum = torch.zeros((), dtype=torch.float64)
    started = time.perf_counter()
    for step in range(SAMPLES // GLOBAL_BATCH):
        idx = rank_share(global_batch(order, step, GLOBAL_BATCH), rank, world)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach().double()
    float(loss_sum)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()

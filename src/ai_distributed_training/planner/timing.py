"""Timing helpers shared by the planner and calibration: a fixed thread count, medians of
repeated calls, one plain training step, and the compute probe (a small MLP like the reference
workload)."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

#: The compute probe: a small MLP like the reference workload, trained for a few steps.
PROBE_WIDTH, PROBE_BATCH, PROBE_STEPS = 512, 256, 30


def probe_net() -> nn.Module:
    w = PROBE_WIDTH
    return nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 2))


def probe_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The probe's loss: the trainer's per-sample sum for classification."""
    return F.cross_entropy(out, y, reduction="sum")


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the body with ``threads`` intra-op threads, restoring the caller's count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def median_seconds(fn: Callable[[], object], runs: int, warmup: int = 0) -> float:
    """Median wall seconds of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> Callable[[], None]:
    """One plain training step on a fixed batch, as a function to time."""

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_sum(net(x), y).backward()
        optimizer.step()

    return step

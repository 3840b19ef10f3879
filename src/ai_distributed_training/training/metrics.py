"""Metric sums: per-sample quantities summed over batches and ranks, then divided by counts.

Everything is a SUM with a COUNT (never an average of averages), so reductions across batches
and ranks are exact. One vector per rank holds, in order: loss sum, correct predictions, samples,
busy seconds, steps, clipped steps, then one sum per user metric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..data import Task

LOSS, CORRECT, COUNT, BUSY, STEPS, CLIPPED = range(6)
BASE_SLOTS = 6


class Meter:
    """Turns batches into stat vectors and stat vectors into named metrics."""

    def __init__(
        self, task: Task, user_metrics: dict[str, Callable[..., Any]], device: torch.device
    ) -> None:
        self.task, self.user_metrics, self.device = task, user_metrics, device
        self.size = BASE_SLOTS + len(user_metrics)

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.size, dtype=torch.float64, device=self.device)

    def batch(self, loss_sum: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The stat vector of one batch (loss sum, correct, count, user metric sums)."""
        stats = self.zeros()
        stats[LOSS] = loss_sum.detach().double()
        stats[COUNT] = len(y)
        if len(y) == 0:
            return stats
        out = out.detach()
        if self.task == "classification" and out.ndim == 3:  # tokens: per-sequence accuracy
            stats[CORRECT] = (out.argmax(dim=2) == y).double().mean(dim=1).sum()
        elif self.task == "classification":
            stats[CORRECT] = (out.argmax(dim=1) == y).sum()
        for i, (name, fn) in enumerate(self.user_metrics.items()):
            values = torch.as_tensor(fn(out.float(), y))
            if values.shape != (len(y),):
                raise ValueError(
                    f"metric {name!r} must return one value per sample (shape "
                    f"[{len(y)}]); it returned shape {list(values.shape)}"
                )
            stats[BASE_SLOTS + i] = values.double().sum()
        return stats

    def summarize(self, prefix: str, totals: torch.Tensor) -> dict[str, float]:
        """Means over every sample: ``<prefix>_loss``, ``<prefix>_accuracy``, user metrics."""
        count = max(float(totals[COUNT]), 1.0)
        out = {f"{prefix}_loss": float(totals[LOSS]) / count}
        if self.task == "classification":
            out[f"{prefix}_accuracy"] = float(totals[CORRECT]) / count
        for i, name in enumerate(self.user_metrics):
            out[f"{prefix}_{name}"] = float(totals[BASE_SLOTS + i]) / count
        return out


def per_worker(gathered: torch.Tensor) -> dict[str, list[float]]:
    """Per-rank mean step time and samples, from the gathered stat vectors (one row per rank)."""
    steps = gathered[:, STEPS].clamp(min=1)
    return {
        "worker_step_time_s": (gathered[:, BUSY] / steps).tolist(),
        "worker_samples": gathered[:, COUNT].tolist(),
    }

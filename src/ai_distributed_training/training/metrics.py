"""Metric sums: per-sample quantities summed over batches and ranks, then divided by counts.

Everything is a SUM with a COUNT (never an average of averages), so reductions across batches
and ranks are exact. One vector per rank holds, in order: loss sum, correct predictions, samples,
busy seconds, steps, clipped steps, the items the loss is summed over, the items accuracy is
scored on, then one sum per user metric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..data import Task
from ..data.structure import IGNORE_INDEX
from ..host import peak_rss_bytes

LOSS, CORRECT, COUNT, BUSY, STEPS, CLIPPED, ITEMS, SCORED = range(8)
#: ITEMS: what the loss is a mean over (samples, or counted items such as valid tokens);
#: SCORED: the items accuracy was scored on. Checkpoints from before these two existed hold
#: the first six slots (then the user metrics); :meth:`Meter.upgrade` reads them.
BASE_SLOTS = 8
_OLD_BASE_SLOTS = 6
#: Named metrics a train_step may return (each takes two slots: sum, count).
MAX_STEP_METRICS = 16


class Meter:
    """Turns batches into stat vectors and stat vectors into named metrics."""

    def __init__(
        self,
        task: Task,
        user_metrics: dict[str, Callable[..., Any]],
        device: torch.device,
        step_metrics: list[str] | None = None,
    ) -> None:
        self.task, self.user_metrics, self.device = task, user_metrics, device
        #: A train_step's named metrics (filled by its first call), each a (sum, count) pair of
        #: slots at the end of the vector; None without a train_step.
        self.step_metrics = step_metrics
        extra = 2 * MAX_STEP_METRICS if step_metrics is not None else 0
        self.size = BASE_SLOTS + len(user_metrics) + extra

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.size, dtype=torch.float64, device=self.device)

    def batch(
        self,
        loss_sum: torch.Tensor,
        items: torch.Tensor | int,
        samples: int,
        scored: tuple[torch.Tensor, Any] | None,
        metric_args: tuple[Any, Any],
    ) -> torch.Tensor:
        """The stat vector of one batch: its loss sum over ``items``, ``samples``, accuracy
        on ``scored`` (prediction, target; None: not scored) and the user metrics' sums on
        ``metric_args`` (outputs, target)."""
        stats = self.zeros()
        stats[LOSS] = loss_sum.detach().double()
        stats[ITEMS] = items.detach() if isinstance(items, torch.Tensor) else items
        stats[COUNT] = samples
        if samples == 0:
            return stats
        if scored is not None and self.task == "classification":
            stats[CORRECT], stats[SCORED] = _correct(*scored)
        for i, (name, fn) in enumerate(self.user_metrics.items()):
            values = torch.as_tensor(fn(*metric_args)).detach()  # no graph kept in the sums
            if values.shape != (samples,):
                raise ValueError(
                    f"metric {name!r} must return one value per sample (shape "
                    f"[{samples}]); it returned shape {list(values.shape)}"
                )
            stats[BASE_SLOTS + i] = values.double().sum()
        return stats

    def summarize(self, prefix: str, totals: torch.Tensor) -> dict[str, float]:
        """Means: ``<prefix>_loss`` over its items, ``<prefix>_accuracy`` over the scored
        items (classification with the built-in loss or ``loss_fn``), user metrics over the
        samples."""
        count = max(float(totals[COUNT]), 1.0)
        out = {f"{prefix}_loss": float(totals[LOSS]) / max(float(totals[ITEMS]), 1.0)}
        if self.task == "classification" and float(totals[SCORED]) > 0:
            out[f"{prefix}_accuracy"] = float(totals[CORRECT]) / float(totals[SCORED])
        for i, name in enumerate(self.user_metrics):
            out[f"{prefix}_{name}"] = float(totals[BASE_SLOTS + i]) / count
        base = BASE_SLOTS + len(self.user_metrics)
        for i, name in enumerate(self.step_metrics or []):
            if name != "loss":  # <prefix>_loss already
                total, items = totals[base + 2 * i], totals[base + 2 * i + 1]
                out[f"{prefix}_{name}"] = float(total) / max(float(items), 1.0)
        return out

    def upgrade(self, stats: torch.Tensor) -> torch.Tensor:
        """A stat vector from an older checkpoint (no ITEMS, SCORED slots) in today's layout:
        its losses and accuracies were per sample."""
        if len(stats) != self.size - (BASE_SLOTS - _OLD_BASE_SLOTS):
            return stats
        old = stats[:_OLD_BASE_SLOTS]
        return torch.cat([old, old[COUNT : COUNT + 1].repeat(2), stats[_OLD_BASE_SLOTS:]])


def _correct(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, scored) counts: classes in the last dimension of outputs shaped
    ``(*target.shape, classes)``, else in dimension 1; targets of -100 are not scored."""
    dim = -1 if pred.shape[:-1] == target.shape else 1
    # A predicted class is never -100: an ignored target is never counted correct.
    correct = pred.detach().argmax(dim=dim) == target
    return correct.sum(), (target != IGNORE_INDEX).sum()


def per_worker(gathered: torch.Tensor, peaks: torch.Tensor) -> dict[str, list[Any]]:
    """Per-rank mean step time and samples, from the gathered stat vectors (one row per rank),
    and each rank's peak memory so far (``peaks``, gathered :func:`peak_memory_bytes`)."""
    steps = gathered[:, STEPS].clamp(min=1)
    return {
        "worker_step_time_s": (gathered[:, BUSY] / steps).tolist(),
        "worker_samples": gathered[:, COUNT].tolist(),
        "worker_peak_memory_bytes": [int(p) for p in peaks.tolist()],
    }


def peak_memory_bytes(device: torch.device) -> int:
    """This rank's peak memory so far, as the planner predicts it: the bytes allocated on its
    GPU, else its process's peak resident memory."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()

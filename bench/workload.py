"""The reference workload shared by every variant: same data, model, optimizer and batch."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from ai_distributed_training import Callback
from ai_distributed_training.config import SyntheticDataSpec
from ai_distributed_training.data import make_synthetic
from ai_distributed_training.training.callbacks import CallbackContext

SAMPLES, FEATURES, CLASSES = 100_000, 128, 2
HIDDEN = (512, 512)
GLOBAL_BATCH, EPOCHS, LR, SEED = 1024, 2, 1e-3, 0


#: The file where a run writes when its training loop starts (set per run by bench.common).
LOOP_START_FILE = "ADT_BENCH_LOOP_START_FILE"


def mark_loop_start() -> None:
    """Write this moment (wall clock) to the run's loop-start file: the time to the first step,
    counted from the command's start (call on one rank, right before the loop)."""
    path = os.environ.get(LOOP_START_FILE)
    if path:
        Path(path).write_text(repr(time.time()))


class LoopStart(Callback):
    """:func:`mark_loop_start` from inside ``train_distributed`` (rank 0, before the first
    step; it costs nothing per step)."""

    def on_train_start(self, ctx: CallbackContext) -> None:
        if ctx.rank == 0:
            mark_loop_start()


def data() -> tuple[torch.Tensor, torch.Tensor]:
    return make_synthetic(SyntheticDataSpec(samples=SAMPLES, features=FEATURES, classes=CLASSES))


def model() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(FEATURES, HIDDEN[0]),
        nn.ReLU(),
        nn.Linear(HIDDEN[0], HIDDEN[1]),
        nn.ReLU(),
        nn.Linear(HIDDEN[1], CLASSES),
    )


class DictRows(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """The reference data as dict samples (``{"x": features, "labels": class}``), read one
    sample at a time: the general path of structured batches and datasets."""

    def __init__(self) -> None:
        self.x, self.y = data()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class DictMLP(nn.Module):
    """The reference MLP, called with keyword inputs (``model(x=...)``) as a dict batch is."""

    def __init__(self) -> None:
        super().__init__()
        self.net = model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class EpochTimer(Callback):
    """Writes each epoch's duration in seconds (rank 0's clock, as a JSON list) to ``path``
    at the end: per-epoch times of one run, for steady-state figures without the first
    epoch's compilation."""

    def __init__(self, path: str) -> None:
        self.path, self.marks = path, [0.0]

    def on_train_start(self, ctx: CallbackContext) -> None:
        self.marks = [time.perf_counter()]

    def on_epoch_end(self, ctx: CallbackContext) -> None:
        self.marks.append(time.perf_counter())

    def on_train_end(self, ctx: CallbackContext) -> None:
        if ctx.rank == 0:
            spans = [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]
            Path(self.path).write_text(json.dumps(spans))

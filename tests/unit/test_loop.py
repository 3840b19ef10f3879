"""The training loop on its own: one rank, no process group, no launcher.

``train()`` with a one-rank strategy is plain PyTorch, so its behaviour (step counts, learning,
exact resume from its own checkpoints, a replaceable step) is tested here in milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from ai_distributed_training.config import TrainingSettings
from ai_distributed_training.config.sections import sections_of
from ai_distributed_training.data.loading import DatasetReader, LoaderOptions, Micro
from ai_distributed_training.training.checkpoint import (
    FORMAT_KEY,
    list_checkpoints,
    load_checkpoint,
    upgraded,
)
from ai_distributed_training.training.context import RankContext, RankData
from ai_distributed_training.training.loop import LoopResult, train
from ai_distributed_training.training.resume import Checkpointer
from ai_distributed_training.training.step import StepRunner
from ai_distributed_training.training.strategies import DDPStrategy
from tests.helpers import SAMPLES, build_model, rank_data


def one_rank(settings: TrainingSettings, ckpt_dir: Path | None = None) -> RankContext:
    return RankContext.of(
        sections_of(settings),
        strategy=DDPStrategy(0, 1, torch.device("cpu")),
        checkpointer=Checkpointer(
            ckpt_dir, writes=True, keep=10, config={}, every=settings.checkpoint_every
        ),
    )


def settings(**overrides: Any) -> TrainingSettings:
    return TrainingSettings(**{"epochs": 3, "batch_size": 64, "learning_rate": 1e-2, **overrides})


def test_one_rank_trains_every_sample_once_per_epoch_and_learns() -> None:
    result = train(build_model(), rank_data(), one_rank(settings()))
    assert isinstance(result, LoopResult)
    n_train = SAMPLES - int(SAMPLES * 0.1)
    assert result.steps == 3 * -(-n_train // 64)  # the last global batch is partial, not dropped
    assert result.samples_seen == 3 * n_train
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert {"val_loss", "val_accuracy", "lr", "samples_per_second"} <= set(result.history[-1])


def test_resuming_a_mid_epoch_checkpoint_gives_bitwise_the_same_weights(tmp_path: Path) -> None:
    """The loop's position, the RNG (dropout) and the optimizer all come back from the
    checkpoint: the resumed run ends bitwise where the uninterrupted one did."""
    s = settings(checkpoint_every=2)
    full = build_model()
    train(full, rank_data(), one_rank(s, tmp_path))
    mid = [p for p in list_checkpoints(tmp_path) if load_checkpoint(p)["loop"]["step_in_epoch"]]
    assert mid, "expected a mid-epoch checkpoint"
    checkpoint = load_checkpoint(mid[-1])  # the oldest one kept
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG
    resumed = build_model(seed=99)  # its weights come from the checkpoint
    result = train(resumed, rank_data(), one_rank(s), checkpoint)
    assert result.steps == 3 * 4
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_the_step_is_a_replaceable_part() -> None:
    """``train(make_step=...)`` runs the loop over another step object."""
    seen: list[tuple[int, int]] = []

    class CountingStep(StepRunner):
        def forward_backward(
            self, micros: Sequence[Micro], global_count: int, step: int
        ) -> torch.Tensor:
            seen.append((step, global_count))
            return super().forward_backward(micros, global_count, step)

    train(build_model(), rank_data(), one_rank(settings(epochs=1)), make_step=CountingStep)
    n_train = SAMPLES - int(SAMPLES * 0.1)
    assert seen == [(1, 64), (2, 64), (3, 64), (4, n_train - 3 * 64)]


class Augmenting(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Each read adds noise from torch's, NumPy's and Python's global generators."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(96, 8, generator=g), torch.randint(0, 2, (96,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        import random

        noise = torch.randn(8) + float(np.random.rand()) + random.random()
        return self.x[i] + 0.1 * noise, self.y[i]


def augmenting_data(num_workers: int) -> RankData:
    reader = DatasetReader(Augmenting(), LoaderOptions(num_workers=num_workers))
    idx = torch.arange(96)
    return RankData(
        reader=reader,
        task="classification",
        train_idx=idx[:80],
        val_reader=reader,
        val_idx=idx[80:],
    )


def test_augmentation_repeats_exactly_with_loader_processes_and_after_a_resume(
    tmp_path: Path,
) -> None:
    """Each sample is read under a seed of (seed, epoch, index): two loader processes give the
    weights this process gives, and a mid-epoch resume through them ends bitwise where the
    uninterrupted run did (dropout's stream is the training process's own, untouched by reads)."""
    s = settings(checkpoint_every=2, batch_size=16, epochs=2)

    def run(num_workers: int, ckpt: Path | None, resume: dict[str, Any] | None) -> nn.Module:
        model = build_model()
        train(model, augmenting_data(num_workers), one_rank(s, ckpt), resume)
        return model

    in_process = run(0, tmp_path, None)
    in_loaders = run(2, None, None)
    mid = [p for p in list_checkpoints(tmp_path) if load_checkpoint(p)["loop"]["step_in_epoch"]]
    resumed = run(2, None, load_checkpoint(mid[0]))
    for name, a in in_process.state_dict().items():
        assert torch.equal(a, in_loaders.state_dict()[name]), name
        assert torch.equal(a, resumed.state_dict()[name]), name


def test_a_checkpoint_from_before_token_counts_resumes(tmp_path: Path) -> None:
    """Older checkpoints hold 6 base slots in the stat vector (no ITEMS, SCORED) and no sample
    count: they resume to the same weights and the same epoch metrics."""
    s = settings(checkpoint_every=2)
    full = build_model()
    expected = train(full, rank_data(), one_rank(s, tmp_path))
    mid = [p for p in list_checkpoints(tmp_path) if load_checkpoint(p)["loop"]["step_in_epoch"]]
    old = load_checkpoint(mid[0])  # the newest mid-epoch one
    del old["loop"]["samples"], old[FORMAT_KEY]
    old = upgraded(old)  # as load_checkpoint reads such a file
    for rank in old["ranks"]:
        rank["epoch_stats"] = rank["epoch_stats"][:6]  # the layout before ITEMS and SCORED
    resumed = build_model(seed=99)
    result = train(resumed, rank_data(), one_rank(s), old)
    assert result.samples_seen == expected.samples_seen
    last, expected_last = result.history[-1], expected.history[-1]
    assert last["train_loss"] == pytest.approx(expected_last["train_loss"], rel=1e-6)
    assert last["train_accuracy"] == pytest.approx(expected_last["train_accuracy"], rel=1e-6)
    for name, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name

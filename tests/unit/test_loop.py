"""The training loop on its own: one rank, no process group, no launcher.

``train()`` with a one-rank strategy is plain PyTorch, so its behaviour (step counts, learning,
exact resume from its own checkpoints, a replaceable step) is tested here in milliseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ai_distributed_training.config import TrainingSettings
from ai_distributed_training.training.checkpoint import list_checkpoints, load_checkpoint
from ai_distributed_training.training.context import RankContext
from ai_distributed_training.training.loop import LoopResult, train
from ai_distributed_training.training.resume import Checkpointer
from ai_distributed_training.training.step import TrainStep
from ai_distributed_training.training.strategies import DDPStrategy
from tests.helpers import SAMPLES, build_model, rank_data


def one_rank(settings: TrainingSettings, ckpt_dir: Path | None = None) -> RankContext:
    return RankContext(
        settings=settings,
        strategy=DDPStrategy(0, 1, torch.device("cpu")),
        checkpointer=Checkpointer(ckpt_dir, writes=True, keep=10, config={}),
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

    class CountingStep(TrainStep):
        def forward_backward(
            self, indices: torch.Tensor, global_count: int, step: int
        ) -> torch.Tensor:
            seen.append((step, global_count))
            return super().forward_backward(indices, global_count, step)

    train(build_model(), rank_data(), one_rank(settings(epochs=1)), make_step=CountingStep)
    n_train = SAMPLES - int(SAMPLES * 0.1)
    assert seen == [(1, 64), (2, 64), (3, 64), (4, n_train - 3 * 64)]

"""Trainer features: accumulation, clipping, schedules, optimizers, precision, evaluation,
determinism, task selection (real gloo workers)."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DistributedSampler, TensorDataset

from ai_distributed_training import Callback, CallbackContext, DistributedTraining, TrainingResult
from ai_distributed_training.config.sections import sections_of
from ai_distributed_training.report import read_records
from ai_distributed_training.training.optim import lr_factor
from tests.helpers import bitwise_equal

pytestmark = pytest.mark.distributed

MODEL = {"model_name": "f", "hidden_sizes": [16]}
SGD = DistributedTraining(
    epochs=1, optimizer="sgd", learning_rate=0.1, validation_split=0.0, runs_dir=None, seed=1
)


def _close(a: TrainingResult, b: TrainingResult, rtol: float = 1e-4) -> None:
    for (name, x), y in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(x, y, rtol=rtol, atol=1e-6, msg=name)


def test_gradient_accumulation_gives_the_same_weights() -> None:
    data = {"samples": 1100, "features": 8}  # 1100 = 4 x 256 + 76: a partial last batch
    one = SGD.train_distributed(MODEL, data, nodes=1, batch_size=256)  # no accumulation
    accumulated = SGD.train_distributed(
        MODEL, data, nodes=2, batch_size=256, gradient_accumulation_steps=4
    )
    _close(accumulated, one)
    # Three ranks, three micro-batches, and a last global batch of 76: some micro-batches are
    # tiny or empty; the weights still match one process without accumulation.
    _close(
        SGD.train_distributed(MODEL, data, nodes=3, batch_size=256, gradient_accumulation_steps=3),
        one,
    )


def test_clipping_uses_the_global_gradient_norm() -> None:
    data = {"samples": 300, "features": 8}
    one = SGD.train_distributed(MODEL, data, nodes=1, batch_size=50, max_grad_norm=1e-3)
    two = SGD.train_distributed(MODEL, data, nodes=2, batch_size=50, max_grad_norm=1e-3)
    assert one["history"][0]["clipped_fraction"] == 1.0 == two["history"][0]["clipped_fraction"]
    _close(two, one)  # a per-rank norm would clip differently on 2 ranks


def test_lr_schedule_and_evaluations_survive_a_restart_exactly() -> None:
    """The schedule steps per optimizer step (warmup, then cosine) and is reported in epoch and
    step records; an evaluation every 3 steps writes eval records; killed at step 5 and
    restarted from a checkpoint, the job ends bitwise where the uninterrupted one did."""
    trainer = DistributedTraining(
        epochs=3,
        batch_size=50,
        lr_schedule="cosine",
        warmup_steps=2,
        learning_rate=0.01,
        log_every_steps=2,
        eval_every=3,
        checkpoint_every=2,
    )
    data = {"samples": 222, "features": 4}
    plain = trainer.train_distributed(MODEL, data, nodes=2)
    steps_per_epoch = -(-199 // 50)  # 222 - 22 held out = 200 -> 4 steps
    factor = lr_factor(sections_of(trainer.resolve_settings()).optim, 3 * steps_per_epoch)
    for epoch, record in enumerate(plain["history"], start=1):
        assert record["lr"] == pytest.approx(0.01 * factor(epoch * steps_per_epoch))
    steps, _ = read_records(Path(plain["run_dir"]))
    assert all("lr" in s for s in steps)
    records = [
        json.loads(line)
        for line in (Path(plain["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    ]
    evals = [r for r in records if r["type"] == "eval"]
    # Steps 4, 8 and 12 end an epoch, whose own evaluation covers them.
    assert [r["step"] for r in evals] == [3, 6, 9]
    assert all("val_loss" in r and "val_accuracy" in r for r in evals)
    restarted = trainer.train_distributed(
        MODEL,
        data,
        nodes=2,
        max_restarts=1,
        fault_injection=[{"kind": "kill", "rank": 1, "step": 5}],
    )
    assert restarted["restarts"] == 1
    assert bitwise_equal(restarted, plain)


def test_optimizer_factory() -> None:
    data = {"samples": 200, "features": 4}
    builtin = SGD.train_distributed(MODEL, data, nodes=2, batch_size=40, momentum=0.0)
    factory = SGD.train_distributed(
        MODEL,
        data,
        nodes=2,
        batch_size=40,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
    )
    _close(factory, builtin, rtol=0)


def test_bf16_autocast_on_cpu_trains() -> None:
    result = DistributedTraining(
        epochs=2, batch_size=64, precision="bf16", runs_dir=None
    ).train_distributed(MODEL, {"samples": 1000, "features": 8}, nodes=2)
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]


def _index_targets(n: int, offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression data whose target IS the sample's index: a metric returning the target
    averages to the mean index exactly when every sample counts exactly once."""
    return torch.randn(n, 3), torch.arange(n, dtype=torch.float32) + offset


def test_validation_covers_every_sample_exactly_once_with_user_metrics() -> None:
    n_train, n_val = 97, 101
    metrics = {"target": lambda out, y: y, "target_sq": lambda out, y: y * y}
    result = DistributedTraining(epochs=1, batch_size=16, runs_dir=None).train_distributed(
        MODEL,
        _index_targets(n_train, 0.0),
        nodes=3,
        metrics=metrics,
        validation_data=_index_targets(n_val, 1000.0),
    )
    m = result["metrics"]
    val_targets = torch.arange(n_val, dtype=torch.float64) + 1000.0
    assert m["val_target"] == pytest.approx(float(val_targets.mean()), rel=1e-12)
    assert m["val_target_sq"] == pytest.approx(float((val_targets**2).mean()), rel=1e-12)
    assert m["train_target"] == pytest.approx((n_train - 1) / 2, rel=1e-12)
    # What DistributedSampler would do (pad with duplicates) fails the same check.
    padded = torch.cat(
        [
            torch.tensor(
                list(
                    DistributedSampler(
                        TensorDataset(val_targets), num_replicas=3, rank=r, shuffle=False
                    )
                )
            )
            for r in range(3)
        ]
    )
    assert float(val_targets[padded].mean()) != pytest.approx(float(val_targets.mean()))


class WorkerStateProbe(Callback):
    """Writes, per rank, what the worker process looks like when training starts."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_start(self, ctx: CallbackContext) -> None:
        state = {
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "collector_on": gc.isenabled(),
            "frozen_objects": gc.get_freeze_count(),
        }
        Path(self.out_dir, f"rank{ctx.rank}").write_text(json.dumps(state))


def _probed(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads((out_dir / f"rank{r}").read_text()) for r in range(2)]


def test_deterministic_mode_reaches_every_worker_and_repeats_bitwise(tmp_path: Path) -> None:
    trainer = DistributedTraining(epochs=1, batch_size=32, deterministic=True, runs_dir=None)
    data = {"samples": 300, "features": 4}
    first = trainer.train_distributed(
        MODEL, data, nodes=2, callbacks=[WorkerStateProbe(str(tmp_path))]
    )
    second = trainer.train_distributed(MODEL, data, nodes=2)
    assert sorted(os.listdir(tmp_path)) == ["rank0", "rank1"]
    assert all(state["deterministic"] for state in _probed(tmp_path))
    _close(first, second, rtol=0)
    DistributedTraining(epochs=1, batch_size=32, runs_dir=None).train_distributed(
        MODEL, data, nodes=2, callbacks=[WorkerStateProbe(str(tmp_path))]
    )
    states = _probed(tmp_path)
    assert not states[0]["deterministic"]  # the probe can tell the difference
    # Every worker imported torch (and torch._dynamo) with the collector off, then froze the
    # ~450k objects out of later collections (launch/worker.py; a plain process has 0).
    assert all(s["collector_on"] and s["frozen_objects"] > 100_000 for s in states), states


def test_task_setting_overrides_inference() -> None:
    x, y = torch.randn(200, 3), torch.randint(0, 3, (200,))
    as_regression = DistributedTraining(epochs=1, runs_dir=None).train_distributed(
        MODEL, (x, y), nodes=2, task="regression"
    )
    assert as_regression["task"] == "regression" and "val_accuracy" not in as_regression["metrics"]
    as_classes = DistributedTraining(epochs=1, runs_dir=None).train_distributed(
        MODEL, (x, y.float()), nodes=2, task="classification"
    )
    assert as_classes["task"] == "classification"

"""The custom-step path on one process: bad input before launch, what train_step must return,
max_steps."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ai_distributed_training import ConfigError, NonFiniteError
from ai_distributed_training.config import TrainingSettings
from ai_distributed_training.config.sections import sections_of
from ai_distributed_training.prepare import prepare
from ai_distributed_training.training.context import RankContext
from ai_distributed_training.training.loop import train
from ai_distributed_training.training.strategies import DDPStrategy
from tests.batch_helpers import distill_step, gan_discriminator, gan_generator, gan_step
from tests.helpers import SAMPLES, build_model, rank_data

DATA = {"samples": 200, "features": 8}
GAN = {"G": gan_generator, "D": gan_discriminator}


def one_rank(**settings: Any) -> RankContext:
    return RankContext.of(
        sections_of(TrainingSettings(**settings)), strategy=DDPStrategy(0, 1, torch.device("cpu"))
    )


def cross_entropy_step(name: str) -> Any:
    """A train_step training model ``name`` on ``(x, y)`` batches with cross-entropy."""

    def step(ctx: Any, batch: Any) -> dict[str, Any]:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(ctx.models[name](x), y)
        ctx.backward(loss)
        ctx.step(name)
        return {"loss": loss}

    return step


@pytest.mark.parametrize(
    ("model", "settings", "message"),
    [
        (GAN, {}, r"a dict of models \(G\+D\)|\(D, G\) trains through your train_step"),
        (GAN, {"train_step": gan_step, "optimizer": {"G": "adam"}}, r"keys \['G'\] must be"),
        (
            {"model_name": "m"},
            {"train_step": gan_step, "gradient_accumulation_steps": 2},
            r"gradient_accumulation_steps=2 does not apply to a train_step",
        ),
        (GAN, {"train_step": gan_step, "validation_data": DATA}, r"a dict of models is not"),
        ({"model_name": "m"}, {"optimizer": {"model": "sgd"}}, r"dict of optimizers goes with"),
        (GAN, {"train_step": gan_step, "scheduler": {"D": print}}, r"scheduler dict's keys"),
    ],
)
def test_custom_step_settings_are_checked_before_launch(
    model: Any, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        prepare(model, DATA, TrainingSettings(nodes=2, **settings))


def test_a_dict_of_models_trains_without_validation() -> None:
    prepared = prepare(GAN, DATA, TrainingSettings(nodes=2, train_step=gan_step))
    assert prepared.loop.validation_split == 0.0 and prepared.model.name == "G+D"


def test_a_train_step_holds_no_samples_out_it_would_never_validate_on() -> None:
    prepared = prepare({"model_name": "m"}, DATA, TrainingSettings(nodes=2, train_step=gan_step))
    assert prepared.loop.validation_split == 0.0
    with pytest.raises(ConfigError, match=r"a train_step is not validated"):
        prepare(
            {"model_name": "m"}, DATA, TrainingSettings(train_step=gan_step, validation_data=DATA)
        )


def test_train_step_must_return_named_losses() -> None:
    def nothing(ctx: Any, batch: Any) -> None:
        x, y = batch
        ctx.backward(torch.nn.functional.cross_entropy(ctx.models["model"](x), y))
        ctx.step("model")

    with pytest.raises(TypeError, match=r"must return a dict of named losses .* returned None"):
        train(build_model(), rank_data(), one_rank(train_step=nothing))


def test_a_single_model_custom_step_learns_and_max_steps_ends_training_mid_epoch() -> None:
    plain = cross_entropy_step("model")
    result = train(build_model(), rank_data(), one_rank(train_step=plain, epochs=3))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    limited = train(
        build_model(), rank_data(), one_rank(train_step=plain, max_steps=5, batch_size=64)
    )
    n_train = SAMPLES - int(SAMPLES * 0.1)  # 231: 4 steps per epoch, the last of 39 samples
    assert limited.steps == 5 and len(limited.history) == 2  # the second epoch cut short
    assert limited.samples_seen == n_train + 64


def test_distillation_helper_step_runs_on_one_rank() -> None:
    from tests.batch_helpers import custom_weights, teacher_and_student

    before = teacher_and_student()
    after = custom_weights(1, distill_step)
    assert torch.equal(after["teacher.0.weight"], before["teacher"][0].weight)  # frozen
    assert not torch.equal(after["student.weight"], before["student"].weight)


def test_a_non_finite_train_step_fails_or_is_skipped() -> None:
    def nan_step(ctx: Any, batch: Any) -> dict[str, Any]:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(ctx.models["model"](x), y)
        ctx.backward(loss)
        ctx.step("model")
        return {"loss": loss * float("nan") if ctx.global_step == 2 else loss}

    with pytest.raises(NonFiniteError, match=r"non-finite value at step 2 on rank\(s\) \[0\]"):
        train(build_model(), rank_data(), one_rank(train_step=nan_step, batch_size=64))
    result = train(
        build_model(),
        rank_data(),
        one_rank(train_step=nan_step, batch_size=64, skip_nonfinite_steps=True),
    )
    assert torch.isfinite(torch.tensor(result.history[-1]["train_loss"]))


def test_non_finite_gradients_stop_the_step() -> None:
    def bad_gradients(ctx: Any, batch: Any) -> dict[str, Any]:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(ctx.models["model"](x), y) * float("inf")
        ctx.backward(loss)
        ctx.step("model")
        return {"loss": torch.tensor(1.0)}

    with pytest.raises(NonFiniteError, match=r"non-finite gradients of model 'model' at step 1"):
        train(build_model(), rank_data(), one_rank(train_step=bad_gradients, epochs=1))


def test_the_report_plots_a_train_steps_own_metrics(tmp_path: Any) -> None:
    import json

    from ai_distributed_training.report import write_report

    (tmp_path / "summary.json").write_text(json.dumps({"model_name": "G+D"}))
    records = [
        {"type": "epoch", "epoch": e, "step": 10 * e, "train_loss": 1.0 / e, "train_d_loss": 1.0,
         "train_g_loss": 0.5 * e, "samples_per_second": 100.0, "worker_step_time_s": [0.1, 0.1]}
        for e in (1, 2)
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    write_report(tmp_path)
    assert (tmp_path / "metrics.png").exists() and (tmp_path / "loss.png").exists()


def test_a_scheduler_factory_replaces_the_lr_schedule() -> None:
    """Stepped once per optimizer step, checkpointed like the built-in one."""

    def halving(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    result = train(build_model(), rank_data(), one_rank(scheduler=halving, batch_size=64))
    steps_per_epoch = 4  # 231 training samples
    assert result.history[0]["lr"] == pytest.approx(1e-3 * 0.5**steps_per_epoch)
    with pytest.raises(TypeError, match=r"the scheduler factory returned int"):
        train(build_model(), rank_data(), one_rank(scheduler=lambda optimizer: 3))


def test_a_dict_of_one_model_trains() -> None:
    """{"student": ...} is a dict of models too: its optimizer is found by that name."""
    from ai_distributed_training.models import Models

    model = Models({"student": build_model()})
    result = train(model, rank_data(), one_rank(train_step=cross_entropy_step("student"), epochs=2))
    assert result.steps == 2


def test_a_step_starts_from_zero_gradients_even_after_a_backward_past_a_stepped_model() -> None:
    """A GAN's generator loss back-propagates through the discriminator after its update: the
    next step's discriminator gradients must be its own loss's alone, not those leftovers."""
    from ai_distributed_training.models import Models

    checked: list[bool] = []

    def step(ctx: Any, batch: Any) -> dict[str, Any]:
        x, y = batch
        a, b = ctx.models["A"], ctx.models["B"]
        loss_b = torch.nn.functional.cross_entropy(b(x), y)
        expected = torch.autograd.grad(loss_b, list(b.parameters()), retain_graph=True)
        ctx.backward(loss_b)  # one rank holding the whole batch: weighted by exactly 1
        grads = zip(b.parameters(), expected, strict=True)
        checked.append(all(torch.allclose(p.grad, e) for p, e in grads))
        ctx.step("B")
        loss_a = torch.nn.functional.cross_entropy(b(a(x)), y)  # reaches B's gradients too
        ctx.backward(loss_a)
        ctx.step("A")
        return {"loss": loss_b}

    torch.manual_seed(0)
    models = Models({"A": torch.nn.Linear(8, 8), "B": build_model()})
    train(models, rank_data(), one_rank(train_step=step, epochs=2, batch_size=64))
    assert len(checked) > 2 and all(checked)


def test_the_report_shows_each_ranks_memory(tmp_path: Any) -> None:
    import json

    from ai_distributed_training.report import write_report

    summary = {"model_name": "m", "peak_memory_per_worker_bytes": [3 << 28, 2 << 28]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    write_report(tmp_path)
    assert not (tmp_path / "memory.png").exists()  # no model-state bytes beside the peaks
    summary["model_state_bytes_per_worker"] = [1 << 20, 1 << 20]
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    html = write_report(tmp_path).read_text()
    assert (tmp_path / "memory.png").stat().st_size > 5_000 and 'data-file="memory.png"' in html

"""How batches of any structure reach the model, the loss and the metrics (one process)."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ai_distributed_training.config import TrainingSettings
from ai_distributed_training.config.sections import sections_of
from ai_distributed_training.data.structure import num_samples, to_device
from ai_distributed_training.training.metrics import Meter
from ai_distributed_training.training.objective import NoTargetError, Objective, prediction

SETTINGS = TrainingSettings()


class TwoInputs(nn.Module):
    """Numeric features plus categorical ids through an embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(5, 3), nn.Linear(4 + 3, 2)

    def forward(self, numeric: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([numeric, self.embed(ids)], dim=1))


class DictModel(nn.Module):
    """Takes two named inputs, not ``labels``, and returns a dict with a tuple inside."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> dict[str, Any]:
        logits = self.head(x) * scale[:, None]
        return {"logits": logits, "extra": (logits.sum(),)}


def test_a_tuple_batch_calls_the_model_with_every_input_and_keeps_the_last_as_target() -> None:
    model, objective = (
        TwoInputs(),
        Objective.of(TwoInputs(), "classification", sections_of(SETTINGS).step),
    )
    batch = (torch.randn(6, 4), torch.randint(0, 5, (6,)), torch.randint(0, 2, (6,)))
    out = objective.call(model, batch)
    loss_sum, count = objective.loss(out, batch, objective.count(batch), None)
    expected = F.cross_entropy(model(batch[0], batch[1]), batch[2], reduction="sum")
    assert count is None and torch.allclose(loss_sum, expected)


def test_a_dict_batch_is_passed_by_name_less_the_keys_forward_does_not_take() -> None:
    model = DictModel()
    objective = Objective.of(model, "classification", sections_of(SETTINGS).step)
    batch = {
        "x": torch.randn(5, 4),
        "scale": torch.ones(5),
        "labels": torch.tensor([0, 1, 2, 1, 0]),
    }
    out = objective.call(model, batch)  # labels left out: DictModel.forward has no such parameter
    loss_sum, _ = objective.loss(out, batch, objective.count(batch), None)
    assert torch.allclose(
        loss_sum, F.cross_entropy(out["logits"], batch["labels"], reduction="sum")
    )
    assert objective.scored(out, batch) is not None  # accuracy: logits vs labels


def test_forward_and_loss_fn_settings_replace_the_defaults() -> None:
    model = DictModel()

    def forward(m: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        return m(batch["features"], batch["weight"])

    def loss_fn(outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> Any:
        per = F.cross_entropy(outputs["logits"], batch["y"], reduction="none")
        return per.sum(), torch.tensor(len(per) + 1)  # a (sum, count) pair

    settings = TrainingSettings(forward=forward, loss_fn=loss_fn)
    objective = Objective.of(model, "classification", sections_of(settings).step)
    batch = {"features": torch.randn(3, 4), "weight": torch.ones(3), "y": torch.tensor([0, 1, 2])}
    loss_sum, count = objective.loss(objective.call(model, batch), batch, None, None)
    assert count is not None and float(count) == 4.0 and loss_sum.ndim == 0


def test_a_namedtuple_batch_keeps_its_type_on_the_way_to_the_device() -> None:
    Pair = namedtuple("Pair", ["inputs", "target"])
    batch = {"a": Pair(torch.zeros(2, 3), torch.ones(2)), "meta": "kept", "n": [torch.zeros(2)]}
    moved = to_device(batch, torch.device("cpu"))
    assert isinstance(moved["a"], Pair) and moved["meta"] == "kept" and num_samples(moved) == 2


def test_tensors_that_disagree_on_the_number_of_samples_are_named() -> None:
    with pytest.raises(ValueError, match=r"batch\['ids'\]: 3, batch\['y'\]: 4"):
        num_samples({"ids": torch.zeros(3, 2), "y": torch.zeros(4)})


def test_outputs_of_any_shape_give_their_prediction() -> None:
    logits = torch.randn(2, 3)
    assert prediction((logits, torch.zeros(1))) is logits
    assert prediction({"loss": torch.tensor(1.0), "logits": logits}) is logits
    assert prediction({"hidden": [logits]}) is logits


def test_no_target_and_no_own_loss_is_a_clear_error() -> None:
    model = DictModel()
    objective = Objective.of(model, "custom", sections_of(SETTINGS).step)
    batch = {"x": torch.randn(2, 4), "scale": torch.ones(2)}
    with pytest.raises(NoTargetError, match=r"keys \['scale', 'x'\] and no target key"):
        objective.loss(objective.call(model, batch), batch, None, None)


def test_a_loss_fn_returning_a_vector_is_refused() -> None:
    settings = TrainingSettings(loss_fn=lambda out, y: F.cross_entropy(out, y, reduction="none"))
    objective = Objective.of(nn.Linear(4, 2), "classification", sections_of(settings).step)
    batch = (torch.randn(3, 4), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match=r"scalar tensor .* it returned \[3\]"):
        objective.loss(objective.call(nn.Linear(4, 2), batch), batch, None, None)


def test_per_position_targets_count_their_valid_positions() -> None:
    """Token-level classification: outputs (N, T, C), targets (N, T), -100 ignored."""
    objective = Objective.of(nn.Linear(4, 3), "classification", sections_of(SETTINGS).step)
    y = torch.tensor([[0, 1, -100], [2, -100, -100]])
    batch = (torch.randn(2, 3, 4), y)
    out = objective.call(nn.Linear(4, 3), batch)
    count = objective.count(batch)
    loss_sum, _ = objective.loss(out, batch, count, None)
    assert count is not None and float(count) == 3.0
    expected = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="sum")
    assert torch.allclose(loss_sum, expected)
    correct, scored = (
        Meter("classification", {}, torch.device("cpu"))
        .batch(loss_sum, count, 2, objective.scored(out, batch), (out, y))[[1, 7]]
        .tolist()
    )
    assert scored == 3.0 and 0 <= correct <= 3


def test_a_hugging_face_causal_lm_uses_its_own_loss_and_shifted_token_counts() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=1, n_head=2, n_embd=8, vocab_size=11, n_positions=8, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config).eval()  # no dropout: two calls agree
    objective = Objective.of(model, "classification", sections_of(SETTINGS).step)
    assert objective.takes_num_items and objective.shifts_labels
    ids = torch.randint(0, 11, (2, 6))
    labels = ids.clone()
    labels[1, 3:] = -100
    batch = {"input_ids": ids, "labels": labels}
    count = objective.count(batch)
    assert count is not None and float(count) == 5 + 2  # labels[..., 1:] that are not -100
    out = objective.call(model, batch, num_items=float(count))
    loss_sum, _ = objective.loss(out, batch, count, float(count))
    plain = model(input_ids=ids, labels=labels).loss  # the model's own mean over those tokens
    assert torch.allclose(loss_sum, plain * count.float(), rtol=1e-5)
    assert objective.scored(out, batch) is None  # its own loss shifts: accuracy is not scored


def test_user_metrics_and_accuracy_on_dict_batches() -> None:
    """A metric gets (outputs, batch) for a dict batch, as loss_fn does, and returns one value
    per sample; accuracy pairs the logits with the labels key."""
    model = DictModel()

    def confident(outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs["logits"].softmax(1).max(1).values * (batch["labels"] >= 0)

    settings = TrainingSettings(metrics={"confident": confident})
    objective = Objective.of(model, "classification", sections_of(settings).step)
    batch = {"x": torch.randn(4, 4), "scale": torch.ones(4), "labels": torch.tensor([0, 1, 2, 0])}
    out = objective.call(model, batch)
    loss_sum, _ = objective.loss(out, batch, None, None)
    meter = Meter("classification", settings.metrics, torch.device("cpu"))
    stats = meter.batch(
        loss_sum, 4, 4, objective.scored(out, batch), objective.metric_args(out, batch)
    )
    summary = meter.summarize("train", stats)
    assert set(summary) == {"train_loss", "train_accuracy", "train_confident"}
    assert 1 / 3 <= summary["train_confident"] <= 1.0


def test_a_hugging_face_data_collator_is_a_collate_fn() -> None:
    from transformers import default_data_collator

    from ai_distributed_training.data import resolve_data

    class Encoded(torch.utils.data.Dataset[dict[str, Any]]):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"input_ids": [i, i + 1, i + 2], "attention_mask": [1, 1, 1], "label": i % 2}

    info = resolve_data(Encoded(), collate_fn=default_data_collator).info
    assert info.structured and info.task == "classification"
    assert (
        "'input_ids': (2, 3) int64" in info.description
        and "'labels': (2,) int64" in info.description
    )


def test_metric_sums_keep_no_autograd_graph() -> None:
    """A metric computed from outputs that carry a graph must not chain the epoch's sums
    into one growing graph."""
    meter = Meter("classification", {"m": lambda out, y: out["logits"].sum(1)}, torch.device("cpu"))
    logits = torch.randn(3, 2, requires_grad=True)
    stats = meter.batch(logits.sum(), 3, 3, None, ({"logits": logits}, None))
    assert not stats.requires_grad


def test_accuracy_counts_only_targets_that_are_not_ignored() -> None:
    """Per-position targets with ignored (-100) positions: those are neither scored nor
    correct, whatever the prediction there."""
    meter = Meter("classification", {}, torch.device("cpu"))
    logits = torch.zeros(1, 4, 3)
    logits[0, :, 1] = 1.0  # predicts class 1 everywhere
    target = torch.tensor([[1, -100, 2, 1]])  # 2 of the 3 scored positions are right
    stats = meter.batch(torch.tensor(0.0), 3, 1, (logits, target), (logits, target))
    assert meter.summarize("train", stats)["train_accuracy"] == pytest.approx(2 / 3)

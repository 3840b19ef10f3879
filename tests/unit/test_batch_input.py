"""Structured data (dicts, several inputs, user DataLoaders): accepted, described, and refused
with a clear error before any worker starts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from ai_distributed_training import ConfigError, DistributedTraining
from ai_distributed_training.config import TrainingSettings
from ai_distributed_training.config.sections import sections_of
from ai_distributed_training.data import resolve_data
from ai_distributed_training.prepare import prepare
from ai_distributed_training.training.context import RankContext, RankData
from ai_distributed_training.training.loop import train as train_loop
from ai_distributed_training.training.strategies import DDPStrategy
from tests.batch_helpers import TinyLM, pad, tiny_lm

N = 40


class Records(Dataset[dict[str, torch.Tensor]]):
    """Dict samples: numeric features, an id, and (optionally) a label."""

    def __init__(self, labelled: bool = True) -> None:
        self.labelled = labelled

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = {"x": torch.full((4,), float(i)), "scale": torch.tensor(1.0)}
        return {**sample, "labels": torch.tensor(i % 3)} if self.labelled else sample


class RecordsModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.head(x) * scale[:, None]


#: Every error here must come before a worker starts.
pytestmark = pytest.mark.usefixtures("no_launch")


def train(model: Any, data: Any, **settings: Any) -> None:
    DistributedTraining().train_distributed(model, data, nodes=2, **settings)


def test_a_dict_dataset_is_described_by_its_batch_structure() -> None:
    info = resolve_data(Records()).info
    assert info.structured and info.task == "classification"
    assert "batches of {'x': (2, 4) float32, 'scale': (2,) float32, 'labels': (2,) int64}" in (
        info.description
    )


def test_tensors_that_disagree_on_the_number_of_samples() -> None:
    def bad(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {"x": torch.stack([it["x"] for it in items]), "labels": torch.tensor([0])}

    with pytest.raises(ConfigError, match=r"disagree on the number of samples.*'x'\]: 2"):
        train(RecordsModel(), Records(), collate_fn=bad)


def test_a_dict_batch_without_target_and_a_model_without_its_own_loss() -> None:
    with pytest.raises(ConfigError, match=r"no target key \(labels, label.*pass loss_fn"):
        train(RecordsModel(), Records(labelled=False))


def test_a_loss_fn_returning_a_non_scalar() -> None:
    def per_sample(out: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(out, batch["labels"], reduction="none")

    with pytest.raises(ConfigError, match=r"loss_fn must return a scalar tensor"):
        train(RecordsModel(), Records(), loss_fn=per_sample)


def test_variable_length_samples_need_a_collate_fn() -> None:
    from tests.batch_helpers import RaggedTokens

    with pytest.raises(ConfigError, match=r"default_collate \(set collate_fn, e.g. to pad"):
        train(TinyLM(), RaggedTokens())


def test_a_stream_without_len_needs_max_steps_for_a_schedule_by_fraction() -> None:
    class Stream(IterableDataset[torch.Tensor]):
        def __iter__(self) -> Iterator[torch.Tensor]:
            yield torch.zeros(3)

    with pytest.raises(ConfigError, match=r"the stream Stream has no len\(\).*max_steps"):
        train(RecordsModel(), Stream(), lr_schedule="linear")


def test_a_dataloader_batch_size_is_the_global_batch_unless_batch_size_says_otherwise() -> None:
    loader = DataLoader(Records(), batch_size=8, shuffle=True, drop_last=True, num_workers=2)
    prepared = prepare(RecordsModel(), loader, TrainingSettings(nodes=2))
    assert prepared.loop.batch_size == 8 and prepared.loop.drop_last
    assert prepared.data.options.num_workers == 2  # type: ignore[attr-defined]
    assert (
        "its RandomSampler replaced by the global-batch sampler" in prepared.data.info.description
    )
    with pytest.raises(ConfigError, match=r"DataLoader's batch_size=8 differs from batch_size=16"):
        prepare(RecordsModel(), loader, TrainingSettings(nodes=2, batch_size=16))


def test_the_built_in_models_and_the_planner_need_tensor_pairs() -> None:
    with pytest.raises(ConfigError, match=r"built-in 'mlp' model takes \(inputs, targets\)"):
        train({"model_name": "m"}, Records())
    with pytest.raises(ConfigError, match=r"strategy='auto' needs \(inputs, targets\)"):
        train(RecordsModel(), Records(), strategy="auto")


def test_per_position_integer_targets_from_arrays_are_token_classification() -> None:
    ids = torch.randint(0, 7, (10, 6))
    labels = ids.clone()
    labels[:, 4:] = -100  # positions without a target
    info = resolve_data((ids, labels)).info
    assert info.task == "classification" and info.num_outputs == 7


def test_a_global_batch_with_nothing_to_average_over_is_an_error() -> None:
    """Every label -100: no token to take a mean over (not a silent NaN or a zero update)."""
    ids = torch.randint(0, 16, (8, 5))
    data = TensorDataset(ids, torch.full((8, 5), -100))
    from ai_distributed_training.data.loading import DatasetReader

    reader = DatasetReader(data)
    rank_data = RankData(
        reader=reader, task="classification", train_idx=torch.arange(8), val_reader=reader,
        val_idx=torch.zeros(0, dtype=torch.long),
    )  # fmt: skip
    ctx = RankContext.of(
        sections_of(TrainingSettings(batch_size=4)), strategy=DDPStrategy(0, 1, torch.device("cpu"))
    )
    with pytest.raises(ValueError, match=r"global batch of step 1 has 0 items"):
        train_loop(tiny_lm(), rank_data, ctx)


def test_pad_collate_marks_padding_as_no_target() -> None:
    batch = pad([{"input_ids": torch.ones(2).long(), "labels": torch.ones(2).long()},
                 {"input_ids": torch.ones(4).long(), "labels": torch.ones(4).long()}])  # fmt: skip
    assert batch["labels"][0].tolist() == [1, 1, -100, -100]

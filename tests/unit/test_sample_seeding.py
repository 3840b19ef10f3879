"""Per-sample seeds of a map-style Dataset's reads: exact for samples that draw random numbers,
and not paid in Python's and NumPy's generators by a Dataset that never draws from them."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset

from ai_distributed_training.data.loading import DatasetReader, sample_seed

KEY = 11


class DrawsFrom(Dataset[dict[str, torch.Tensor]]):
    """Samples from ``first_drawing`` on add one number from Python's generator and one from
    NumPy's (augmentation that only some samples get); every sample records
    ``torch.initial_seed()``."""

    def __init__(self, first_drawing: int) -> None:
        self.first_drawing = first_drawing

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        noise = 0.0
        if i >= self.first_drawing:
            noise = random.random() + float(np.random.rand())
        return {"value": torch.tensor(i + noise), "seed": torch.tensor(torch.initial_seed())}


def _expected(i: int, first_drawing: int) -> float:
    """Sample ``i`` read under its own seed, worked out without the reader."""
    seed = sample_seed(KEY, i)
    noise = 0.0
    if i >= first_drawing:
        numpy_draw = float(np.random.RandomState(seed & 0xFFFFFFFF).rand())
        noise = random.Random(seed).random() + numpy_draw
    return i + noise


def test_samples_that_draw_only_late_in_a_batch_still_get_their_own_seeds() -> None:
    reader = DatasetReader(DrawsFrom(first_drawing=6))
    first = reader.batch(torch.arange(0, 6), KEY)  # draws nothing: read without those seeds
    assert not reader.dataset.draws_random
    second = reader.batch(torch.tensor([3, 4, 5, 6, 7]), KEY)  # 6 and 7 draw: read again
    assert reader.dataset.draws_random
    third = reader.batch(torch.tensor([8, 2]), KEY)
    for batch, indices in ((first, range(0, 6)), (second, [3, 4, 5, 6, 7]), (third, [8, 2])):
        expected = torch.tensor([_expected(i, 6) for i in indices])
        assert torch.equal(batch["value"], expected), (list(indices), batch, expected)
        assert batch["seed"].tolist() == [sample_seed(KEY, i) for i in indices]


def test_a_dataset_that_never_draws_keeps_the_fast_path_and_torchs_per_sample_seed() -> None:
    reader = DatasetReader(DrawsFrom(first_drawing=len(DrawsFrom(0))))
    python_state, numpy_keys = random.getstate(), np.random.get_state()[1].copy()
    for start in range(0, 12, 4):
        batch = reader.batch(torch.arange(start, start + 4), KEY)
        seeds = [sample_seed(KEY, i) for i in range(start, start + 4)]
        assert batch["seed"].tolist() == seeds
    assert not reader.dataset.draws_random
    # The caller's generators are as they were (the reader keeps its process's streams).
    assert random.getstate() == python_state
    assert np.array_equal(np.random.get_state()[1], numpy_keys)

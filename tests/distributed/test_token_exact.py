"""Token-exact global-batch semantics on real gloo ranks: ranks and micro-batches with very
different numbers of valid tokens are weighted by their tokens, not averaged as equals."""

from __future__ import annotations

import pytest
import torch

from ai_distributed_training.launch.debug import debug_launcher
from ai_distributed_training.training.strategies import DDPStrategy
from tests.batch_helpers import (
    max_relative_difference,
    ragged_cases,
    tiny_gpt2,
    token_mean_reference,
    weights_after,
)

pytestmark = pytest.mark.distributed

EXACT = 1e-5  # float rounding of sums taken in another order
NAIVE = 1e-3  # what averaging the ranks' own token means as equals does to the weights


@pytest.mark.parametrize("ranks", [2, 3])
def test_ragged_sequences_train_the_same_weights_at_any_nodes_and_accumulation(ranks: int) -> None:
    """A plain model with per-position targets (the built-in loss, -100 ignored), a Hugging Face
    GPT-2 with its own loss (``num_items_in_batch``), and GPT-2 under FSDP (GPT2Block units):
    every one ends where one process taking the mean over every valid token of each global
    batch ends. A loss averaged per micro-batch (weighted by samples, as DDP, Lightning and
    Accelerate do by default) measurably does not."""
    reference = token_mean_reference()
    gpt2_reference = weights_after(tiny_gpt2, DDPStrategy(0, 1, torch.device("cpu")))
    per_rank = debug_launcher(ragged_cases, num_processes=ranks, timeout_s=120)
    cases = per_rank[0]
    for case, weights in cases.items():
        for other in per_rank[1:]:
            assert max_relative_difference(other[case], weights) == 0.0, case  # replicas agree
        expected = gpt2_reference if case.startswith("gpt2") else reference
        error = max_relative_difference(weights, expected)
        if case == "naive":
            assert error > NAIVE, error
        else:
            assert error < EXACT, (case, error)

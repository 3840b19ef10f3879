"""Sharded from birth: under FSDP a model built from a spec, a factory or a Hugging Face config
is built on the meta device on every rank and only this rank's shards are allocated and
initialised, module by module, so that the initial weights are the same at any number of
ranks; a model whose construction writes weights that module-by-module init cannot redo is
built whole on rank 0 instead (its own weights, never silently different ones)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ai_distributed_training.data import DataInfo
from ai_distributed_training.launch.debug import debug_launcher
from ai_distributed_training.models import resolve_model
from ai_distributed_training.training.strategies.fsdp import FSDPStrategy

pytestmark = pytest.mark.distributed

INFO = DataInfo(
    samples=64, input_shape=(8,), task="classification", num_outputs=3, description="test"
)
SPEC = {"model_name": "m", "hidden_sizes": [48, 40]}


class CustomInit(nn.Module):
    """Its constructor zeroes a layer after the layer's own init: not redone module by module."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.out = nn.Linear(8, 16), nn.Linear(16, 3)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x).relu())


class SkippedByInitWeights(nn.Module):
    """A model-level ``_init_weights`` that forgets its own extra parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 3)
        self.scale = nn.Parameter(torch.full((3,), 2.0))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) * self.scale


class ResettingBlock(nn.Module):
    """A block whose reset_parameters re-initialises its layers' weights (a common pattern)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 32), nn.Linear(32, 8)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.a.weight, std=0.5)
        nn.init.normal_(self.b.weight, std=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x).relu())


def with_resetting_blocks() -> nn.Module:
    return nn.Sequential(ResettingBlock(), ResettingBlock(), nn.Linear(8, 3))


def initial_weights(model: object, blocks: list[str]) -> tuple[dict[str, torch.Tensor], int]:
    """On each rank: the FSDP strategy's initial weights, gathered whole, and the bytes of
    parameters this rank holds (its shards)."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(11)
    strategy = FSDPStrategy(rank, world, torch.device("cpu"), blocks=blocks)
    wrapped = strategy.wrap(strategy.build_model(resolve_model(model), INFO))
    held = sum(p.to_local().numel() * p.element_size() for p in wrapped.parameters())
    return strategy.full_state_dict(wrapped), held


def both_models() -> list[tuple[dict[str, torch.Tensor], int]]:
    """On each rank: :func:`initial_weights` of the MLP spec and of the resetting blocks (one
    process start for both)."""
    return [initial_weights(SPEC, ["Linear"]), initial_weights(with_resetting_blocks, BLOCKS)]


BLOCKS = ["ResettingBlock"]


@pytest.fixture(scope="module")
def at_one_two_four() -> dict[int, list[list[tuple[dict[str, torch.Tensor], int]]]]:
    """Per world size, per rank: both models' initial weights and held bytes."""
    return {n: debug_launcher(both_models, num_processes=n) for n in (1, 2, 4)}


def test_initial_weights_are_the_same_at_one_two_and_four_ranks(at_one_two_four: dict) -> None:
    one, _ = at_one_two_four[1][0][0]
    for n, ranks in at_one_two_four.items():
        for (weights, _), _ in ranks:
            assert weights.keys() == one.keys()
            for name in one:
                assert torch.equal(weights[name], one[name]), (n, name)
    full = sum(t.numel() * t.element_size() for t in one.values())
    # Each rank holds its quarter only.
    assert all(held <= full / 4 + 200 for (_, held), _ in at_one_two_four[4])
    # A real init: torch's Linear bounds (1/sqrt(fan_in)), not zeros or leftovers.
    bound = 1 / 8**0.5
    first = one["1.weight"]
    assert first.abs().max() <= bound and first.std() > bound / 3


def test_a_block_that_resets_its_layers_is_initialised_with_them_at_any_world_size(
    at_one_two_four: dict,
) -> None:
    """The block and its layers are one unit, initialised on full-size tensors: the block's
    own init (std 0.5) wins, as in its constructor, the same at 1, 2 and 4 ranks."""
    one, _ = at_one_two_four[1][0][1]
    for ranks in at_one_two_four.values():
        for _, (weights, _) in ranks:
            assert all(torch.equal(weights[k], one[k]) for k in one)
    assert 0.4 < float(one["0.a.weight"].std()) < 0.6  # the block's init, not Linear's (~0.2)
    assert not torch.equal(one["0.a.weight"], one["1.a.weight"])  # each module its own seed


def test_a_construction_that_writes_weights_is_built_whole_on_rank_0() -> None:
    (weights, _), _ = debug_launcher(initial_weights, CustomInit, [], num_processes=2)
    torch.manual_seed(11)
    assert torch.equal(weights["out.weight"], torch.zeros(3, 16))  # the constructor's zeros
    expected = CustomInit().state_dict()
    for name, value in expected.items():
        assert torch.equal(weights[name], value), name


def test_a_parameter_the_models_init_weights_skips_comes_from_rank_0s_build() -> None:
    (weights, _), _ = debug_launcher(initial_weights, SkippedByInitWeights, [], num_processes=2)
    assert torch.equal(weights["scale"], torch.full((3,), 2.0))

"""Helpers shared by the tests: running the `adt` command, comparing trained weights."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

import torch
from torch import nn

from ai_distributed_training import TrainingResult
from ai_distributed_training.config import SyntheticDataSpec, TrainingSettings
from ai_distributed_training.config.sections import sections_of
from ai_distributed_training.data import make_synthetic
from ai_distributed_training.data.types import TensorReader
from ai_distributed_training.training.context import RankContext, RankData
from ai_distributed_training.training.loop import train
from ai_distributed_training.training.sharding import train_val_split
from ai_distributed_training.training.strategies import DDPStrategy, Strategy


def adt(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ai_distributed_training ARGS`` (the `adt` command), ``env`` added to ours."""
    return subprocess.run(
        [sys.executable, "-m", "ai_distributed_training", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold exactly the same tensors under the same keys."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def bitwise_equal(a: TrainingResult, b: TrainingResult) -> bool:
    """Whether two results' trained models hold exactly the same tensors."""
    return same_tensors(a.model.state_dict(), b.model.state_dict())


# --- one rank's loop without the launcher (tests/unit/test_loop.py, test_loop_ranks.py) ---------

SAMPLES, FEATURES = 256, 8


def rank_data() -> RankData:
    """A small synthetic classification table, 10% held out, as one rank reads it."""
    x, y = make_synthetic(SyntheticDataSpec(samples=SAMPLES, features=FEATURES, seed=3))
    reader = TensorReader(x, y)
    train_idx, val_idx = train_val_split(SAMPLES, 0.1, seed=0)
    return RankData(
        reader=reader,
        task="classification",
        train_idx=train_idx,
        val_reader=reader,
        val_idx=val_idx,
    )


def build_model(seed: int = 0, dropout: float = 0.2) -> nn.Module:
    """A small MLP, seeded: the same initial weights in every process."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 2))


LOOP_SETTINGS = TrainingSettings(epochs=2, batch_size=64, learning_rate=1e-2)


def train_with(strategy: Strategy) -> dict[str, torch.Tensor]:
    """The full weights after ``train()`` with ``strategy`` (dropout off: ranks agree)."""
    model = build_model(dropout=0.0)
    train(model, rank_data(), RankContext.of(sections_of(LOOP_SETTINGS), strategy=strategy))
    return strategy.full_state_dict(model)


def ddp_then_fsdp() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], bool]:
    """On each rank of a debug_launcher job: the weights after training with DDP, whether the
    replicas agree, then the weights after training with FSDP."""
    from ai_distributed_training.training.strategies.fsdp import FSDPStrategy

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    cpu = torch.device("cpu")
    ddp = DDPStrategy(rank, world, cpu)
    ddp_weights = train_with(ddp)
    in_sync = ddp.replicas_identical(ddp_weights)
    ddp.close()
    return ddp_weights, train_with(FSDPStrategy(rank, world, cpu, blocks=["Linear"])), in_sync


def optimizer_matrix() -> dict[str, tuple[float, bool]]:
    """On each rank of a debug_launcher job: every built-in optimizer under every strategy,
    one epoch each: ``{"<strategy>/<optimizer>": (final train loss, replicas agree)}``."""
    from ai_distributed_training.training.strategies.fsdp import FSDPStrategy

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    cpu, out = torch.device("cpu"), {}
    for optimizer in ("sgd", "adam", "adamw"):
        settings = LOOP_SETTINGS.model_copy(update={"optimizer": optimizer, "epochs": 1})
        for name in ("ddp", "fsdp"):
            strategy: Strategy = (
                DDPStrategy(rank, world, cpu)
                if name == "ddp"
                else FSDPStrategy(rank, world, cpu, blocks=["Linear"])
            )
            model = build_model(dropout=0.0)
            ctx = RankContext.of(sections_of(settings), strategy=strategy)
            loss = train(model, rank_data(), ctx).history[-1]["train_loss"]
            weights = strategy.full_state_dict(model)
            out[f"{name}/{optimizer}"] = (loss, strategy.replicas_identical(weights))
            strategy.close()
    return out


def resume_is_bitwise(directory: str, compile_backend: str | None = None) -> bool:
    """On each rank of a debug_launcher job: train with mid-epoch checkpoints, then again from
    the oldest mid-epoch checkpoint kept; whether both runs end with the same bytes (the model
    compiled with ``compile_backend``, if given)."""
    from pathlib import Path

    from ai_distributed_training.training.checkpoint import list_checkpoints, load_checkpoint
    from ai_distributed_training.training.resume import Checkpointer

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    settings = LOOP_SETTINGS.model_copy(update={"epochs": 2, "checkpoint_every": 2})

    def run(resume: dict[str, object] | None) -> dict[str, torch.Tensor]:
        torch.manual_seed(100 + rank)  # each rank's own dropout stream
        model = build_model(dropout=0.2)
        strategy = DDPStrategy(rank, world, torch.device("cpu"), compile_backend=compile_backend)
        checkpointer = Checkpointer(
            Path(directory), writes=rank == 0, keep=20, config={}, every=settings.checkpoint_every
        )
        ctx = RankContext.of(sections_of(settings), strategy=strategy, checkpointer=checkpointer)
        train(model, rank_data(), ctx, resume)
        weights = strategy.full_state_dict(model)
        strategy.close()
        return weights

    full = run(None)
    mid = [
        p for p in list_checkpoints(Path(directory)) if load_checkpoint(p)["loop"]["step_in_epoch"]
    ]
    resumed = run(load_checkpoint(mid[-1]))
    return same_tensors(full, resumed)


def _fsdp_initial_state(model: object, data: object, seed: int) -> dict[str, torch.Tensor]:
    """On one debug_launcher rank: the FSDP strategy's initial weights of ``model`` for
    ``data`` (built on the meta device and initialised module by module), whole."""
    from ai_distributed_training.data import resolve_data
    from ai_distributed_training.models import resolve_model
    from ai_distributed_training.training.strategies.fsdp import FSDPStrategy

    source = resolve_model(model)
    strategy = FSDPStrategy(0, 1, torch.device("cpu"), blocks=source.blocks())
    torch.manual_seed(seed)
    wrapped = strategy.wrap(strategy.build_model(source, resolve_data(data).info))
    return strategy.full_state_dict(wrapped)


def fsdp_initial_model(model: object, data: object, seed: int) -> nn.Module:
    """``model`` (a spec) built whole, holding the initial weights FSDP gives it: the start to
    hand DDP so that both strategies train the same weights."""
    from ai_distributed_training.data import resolve_data
    from ai_distributed_training.launch.debug import debug_launcher
    from ai_distributed_training.models import resolve_model

    state = debug_launcher(_fsdp_initial_state, model, data, seed, num_processes=1)[0]
    module = resolve_model(model).build(resolve_data(data).info)
    module.load_state_dict(state)
    return module

"""The sharded strategy (FSDP2 on gloo): DDP's weights, sharded checkpoints that reshard."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from ai_distributed_training import DistributedTraining, TrainingResult, WorkerFailedError
from ai_distributed_training.errors import ConfigError
from ai_distributed_training.training.checkpoint import COMMIT_MARKER, list_checkpoints
from tests.helpers import bitwise_equal, fsdp_initial_model

pytestmark = pytest.mark.distributed

MODEL = {"model_name": "m", "hidden_sizes": [32, 32]}
DATA = {"samples": 1000, "features": 8}
# 900 training samples, 64 per step: 15 steps per epoch, 30 in all. Micro-batches (no_sync)
# and clipping (a global norm over shards) are on throughout.
TRAINER = DistributedTraining(
    epochs=2,
    batch_size=64,
    seed=3,
    runs_dir=None,
    checkpoint_every=4,
    keep_checkpoints=10,
    gradient_accumulation_steps=2,
    max_grad_norm=0.5,
)


def _close(a: TrainingResult, b: TrainingResult) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:  # same math, other reduction order: equal up to float rounding
        torch.testing.assert_close(sa[name], sb[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> TrainingResult:
    ckpt = tmp_path_factory.mktemp("fsdp") / "ckpt"
    return TRAINER.train_distributed(
        MODEL, DATA, nodes=2, strategy="fsdp", checkpoint_dir=str(ckpt)
    )


def test_fsdp_trains_the_weights_ddp_trains(fsdp_run: TrainingResult) -> None:
    # FSDP builds the spec sharded from birth (its own init): DDP starts from the same weights.
    ddp = TRAINER.train_distributed(fsdp_initial_model(MODEL, DATA, seed=3), DATA, nodes=2)
    fsdp = fsdp_run
    assert fsdp["strategy"] == "fsdp" and ddp["strategy"] == "ddp"
    _close(fsdp, ddp)
    assert isinstance(fsdp.model, torch.nn.Sequential)  # a plain full module in the caller
    assert fsdp["history"][-1]["val_loss"] == pytest.approx(ddp["history"][-1]["val_loss"])
    assert fsdp["final_loss"] < fsdp["history"][0]["train_loss"]


def test_a_module_instance_is_sharded_in_place_like_the_spec_built_sharded(
    fsdp_run: TrainingResult,
) -> None:
    """The instance holds the weights the spec is born with: each worker shards its own copy of
    it (no broadcast), and training ends bitwise where the spec's run did."""
    start = fsdp_initial_model(MODEL, DATA, seed=3)
    result = TRAINER.train_distributed(start, DATA, nodes=2, strategy="fsdp")
    assert bitwise_equal(result, fsdp_run)


def test_sharded_checkpoints_are_committed_directories(fsdp_run: TrainingResult) -> None:
    assert fsdp_run["checkpoint_dir"] is not None
    found = list_checkpoints(Path(fsdp_run["checkpoint_dir"]))
    assert found and all(p.suffix == ".dcp" and (p / COMMIT_MARKER).is_file() for p in found)
    assert any(p.name.endswith(".distcp") for p in found[0].iterdir())  # each rank's shards


def test_killed_fsdp_worker_resumes_bitwise(fsdp_run: TrainingResult, tmp_path: Path) -> None:
    result = TRAINER.train_distributed(
        MODEL,
        DATA,
        nodes=2,
        strategy="fsdp",
        checkpoint_dir=str(tmp_path),
        max_restarts=1,
        fault_injection=[{"kind": "kill", "rank": 1, "step": 7}],
    )
    assert result["restarts"] == 1 and bitwise_equal(result, fsdp_run)


@pytest.fixture(scope="module")
def saved_at_four(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoints of a 4-worker job that died after step 8's."""
    directory = tmp_path_factory.mktemp("four") / "ckpt"
    with pytest.raises(WorkerFailedError):  # dies after step 8's checkpoint
        TRAINER.train_distributed(
            MODEL,
            DATA,
            nodes=4,
            strategy="fsdp",
            checkpoint_dir=str(directory),
            fault_injection=[{"kind": "raise", "rank": 0, "step": 10}],
            max_restarts=0,
        )
    assert list_checkpoints(directory)[0].name == "step-00000008.dcp"
    return directory


@pytest.mark.parametrize("nodes", [2, 3])
def test_saved_with_four_workers_resumed_with_two_and_three(
    fsdp_run: TrainingResult, saved_at_four: Path, tmp_path: Path, nodes: int
) -> None:
    """Each rank's shards of every parameter and optimizer state, resharded: the run ends where
    the uninterrupted 2-worker run did (up to float rounding: other reduction orders)."""
    shutil.copytree(saved_at_four, tmp_path / "ckpt")
    resumed = TRAINER.train_distributed(
        MODEL, DATA, nodes=nodes, strategy="fsdp", checkpoint_dir=str(tmp_path / "ckpt"),
        resume="auto",
    )  # fmt: skip
    assert resumed["steps"] == 30 and resumed["resumed_from"].endswith("step-00000008.dcp")
    _close(resumed, fsdp_run)
    if nodes == 2:
        with pytest.raises(
            ConfigError, match=r"step-00000030\.dcp was written with strategy='fsdp'"
        ):
            TRAINER.train_distributed(
                MODEL, DATA, nodes=2, checkpoint_dir=str(tmp_path / "ckpt"), resume="auto"
            )


def test_transformer_on_tokens_shards_by_block_like_ddp() -> None:
    gpt = {"model_name": "gpt", "architecture": "transformer", "d_model": 32, "layers": 2,
           "heads": 4, "activation_checkpointing": True}  # fmt: skip
    tokens = {"samples": 400, "seq_len": 16, "vocab_size": 32}
    trainer = DistributedTraining(epochs=1, batch_size=32, learning_rate=3e-3, runs_dir=None)
    ddp = trainer.train_distributed(fsdp_initial_model(gpt, tokens, seed=0), tokens, nodes=2)
    # The same recomputation asked for by the setting, which takes any model's block names.
    by_name = {**gpt, "activation_checkpointing": False}
    fsdp = trainer.train_distributed(
        by_name, tokens, nodes=2, strategy="fsdp", activation_checkpointing=["DecoderBlock"]
    )
    _close(fsdp, ddp)
    history = fsdp["history"][-1]
    assert history["val_loss"] < 0.9 * math.log(32)  # learnt the chain beyond uniform guessing
    assert fsdp["model_state_bytes_per_worker"][0] < 0.6 * ddp["model_state_bytes_per_worker"][0]

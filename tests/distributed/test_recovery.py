"""Fault recovery: checkpoints, exact resume, automatic restarts, fault injection, bad steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ai_distributed_training import DistributedTraining, TrainingResult, WorkerFailedError
from ai_distributed_training.report import read_records
from ai_distributed_training.training.checkpoint import list_checkpoints, load_checkpoint
from ai_distributed_training.training.sharding import epoch_order, global_batch, train_val_split
from tests.distributed.test_training import RecordingDataset
from tests.helpers import adt, bitwise_equal

pytestmark = pytest.mark.distributed

# Dropout makes the per-rank RNG streams matter: a resume that lost them would not be exact.
MODEL = {"model_name": "m", "hidden_sizes": [32, 32], "dropout": 0.1}
DATA = {"samples": 1000, "features": 8}
TRAINER = DistributedTraining(epochs=2, batch_size=64, checkpoint_every=4, keep_checkpoints=10)
# 900 training samples, 64 per step: 15 steps per epoch, 30 in all; checkpoints every 4 steps.


def _losses(result: TrainingResult) -> list[tuple[float, ...]]:
    return [(h["train_loss"], h["val_loss"], h["val_accuracy"]) for h in result["history"]]


def test_killed_and_raising_workers_restarted_five_times_end_bitwise_equal(
    uninterrupted: TrainingResult,
) -> None:
    """Five failures in a row, one per attempt: kills of either rank mid-epoch (each after a
    checkpoint), and a raise in epoch 2 that is retried because its attempt made progress.
    The result, the loss history and the step records match the uninterrupted run."""
    faults = [
        {"kind": "kill", "rank": 1, "step": 7, "attempt": 0},  # mid-epoch, after step 4's ckpt
        {"kind": "kill", "rank": 0, "step": 10, "attempt": 1},
        {"kind": "raise", "rank": 0, "step": 18, "attempt": 2},  # in epoch 2
        {"kind": "kill", "rank": 1, "step": 22, "attempt": 3},
        {"kind": "kill", "rank": 0, "step": 27, "attempt": 4},
    ]
    result = TRAINER.train_distributed(
        MODEL, DATA, nodes=2, max_restarts=5, log_every_steps=2, fault_injection=faults
    )
    assert result["restarts"] == 5
    assert bitwise_equal(result, uninterrupted)
    assert _losses(result) == _losses(uninterrupted)
    # One metrics record per step, although steps after each checkpoint ran twice.
    steps, epochs = read_records(Path(result["run_dir"]))
    assert [s["step"] for s in steps] == sorted({s["step"] for s in steps})
    assert [e["epoch"] for e in epochs] == [1, 2]
    # Each restart and its reason, in the run's events.log (what the report and page show).
    events = (Path(result["run_dir"]) / "events.log").read_text()
    restarts = [
        line.split(" WARNING ", 1)[1] for line in events.splitlines() if " restart " in line
    ]
    assert restarts == [
        "restart 1 of 5: rank 1 was killed by SIGKILL",
        "restart 2 of 5: rank 0 was killed by SIGKILL",
        "restart 3 of 5: rank 0 failed: InjectedFault: injected fault: rank 0 raised at step 18",
        "restart 4 of 5: rank 1 was killed by SIGKILL",
        "restart 5 of 5: rank 0 was killed by SIGKILL",
    ]


def test_resume_from_a_mid_epoch_file_is_exact_and_needs_the_rng_state(
    uninterrupted: TrainingResult, tmp_path: Path
) -> None:
    ckpt = Path(uninterrupted["checkpoint_dir"]) / "step-00000008.pt"
    state = load_checkpoint(ckpt)
    assert (state["loop"]["epoch"], state["loop"]["step_in_epoch"]) == (1, 8)
    assert state["config"]["checkpoint_every"] == 4 and len(state["ranks"]) == 2
    resumed = TRAINER.train_distributed(MODEL, DATA, nodes=2, resume=str(ckpt))
    assert bitwise_equal(resumed, uninterrupted)

    # The same resume with the RNG states replaced (as if not restored) must differ: this is
    # what makes the equality above a real check.
    torch.manual_seed(12345)
    for rank_state in state["ranks"]:
        rank_state["rng"]["torch"] = torch.get_rng_state()
    broken = tmp_path / "step-00000008.pt"
    torch.save(state, broken)
    assert not bitwise_equal(
        TRAINER.train_distributed(MODEL, DATA, nodes=2, resume=str(broken)), uninterrupted
    )


def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(
    uninterrupted: TrainingResult, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ckpts = tmp_path / "ckpts"
    shutil.copytree(uninterrupted["checkpoint_dir"], ckpts)
    newest = list_checkpoints(ckpts)[0]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a crash mid-copy
    result = TRAINER.train_distributed(
        MODEL, DATA, nodes=2, resume="auto", checkpoint_dir=str(ckpts)
    )
    assert f"skipping unreadable checkpoint {newest}" in capfd.readouterr().err
    assert bitwise_equal(result, uninterrupted)


def test_exhausted_restarts_name_the_rank_signal_and_last_checkpoint() -> None:
    faults = [{"kind": "kill", "rank": 1, "step": 6, "attempt": a} for a in range(2)]
    with pytest.raises(WorkerFailedError) as info:
        TRAINER.train_distributed(MODEL, DATA, nodes=2, max_restarts=1, fault_injection=faults)
    err = info.value
    assert (err.rank, err.first.signal) == (1, "SIGKILL")
    assert err.last_checkpoint is not None and err.last_checkpoint.endswith("step-00000004.pt")
    assert "last checkpoint:" in str(err) and "killed by SIGKILL" in str(err)


def test_nan_loss_stops_the_job_naming_step_and_rank_and_keeps_the_checkpoint() -> None:
    with pytest.raises(WorkerFailedError) as info:
        TRAINER.train_distributed(
            MODEL,
            DATA,
            nodes=2,
            max_restarts=0,
            fault_injection=[{"kind": "nan", "rank": 1, "step": 6}],
        )
    expected = "NonFiniteError: non-finite gradients of model 'model' at step 6 (a non-finite"
    assert f"{expected} loss on rank(s) [1])" in str(info.value)
    assert info.value.last_checkpoint is not None
    assert load_checkpoint(Path(info.value.last_checkpoint))["loop"]["step"] == 4  # intact


def test_nan_loss_can_be_skipped_by_every_rank_together() -> None:
    result = TRAINER.train_distributed(
        MODEL,
        DATA,
        nodes=2,
        skip_nonfinite_steps=True,
        fault_injection=[{"kind": "nan", "rank": 0, "step": 6}],
    )
    assert result["skipped_steps"] == 1 and result["weights_in_sync"]
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_resume_on_three_nodes_from_a_two_node_checkpoint(tmp_path: Path) -> None:
    n, batch = 203, 20
    trainer = DistributedTraining(
        epochs=1,
        batch_size=batch,
        validation_split=0.0,
        checkpoint_every=3,
        checkpoint_dir=str(tmp_path / "ckpt"),
    )
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    with pytest.raises(WorkerFailedError):
        trainer.train_distributed(
            MODEL,
            RecordingDataset(n, str(first)),
            nodes=2,
            max_restarts=0,
            fault_injection=[{"kind": "raise", "rank": 0, "step": 5}],
        )
    ckpt = tmp_path / "ckpt" / "step-00000003.pt"
    result = trainer.train_distributed(
        MODEL, RecordingDataset(n, str(second)), nodes=3, resume=str(ckpt)
    )
    assert result["nodes_used"] == 3 and result["steps"] == -(-n // batch)
    seen = torch.zeros(n, dtype=torch.long)
    for file in second.glob("*.jsonl"):
        for line in file.read_text().splitlines():
            seen[json.loads(line)] += 1
    train_idx, _ = train_val_split(n, 0.0, 0)
    done = torch.cat([global_batch(epoch_order(n, 0, 0), s, batch) for s in range(3)])
    expected = torch.ones(n, dtype=torch.long)
    expected[train_idx[done]] = 0  # the 3 global batches before the checkpoint are not redone
    assert torch.equal(seen, expected)


def test_fault_injection_from_the_cli() -> None:
    proc = adt(
        "train", "--nodes", "2", "--set", "data.samples=500", "--set", "max_restarts=0",
        "--set", "fault_injection=[{kind: raise, rank: 1, step: 2}]", timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "worker rank 1 failed" in proc.stderr
    assert "InjectedFault: injected fault: rank 1 raised at step 2" in proc.stderr


FOUR_MODEL = {"model_name": "m", "hidden_sizes": [32, 32]}  # no dropout: no per-rank streams
FOUR = DistributedTraining(epochs=2, batch_size=64, checkpoint_every=4, runs_dir=None)


@pytest.fixture(scope="module")
def saved_at_four(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainingResult, Path]:
    """An uninterrupted 4-worker run, and the checkpoints of one that died after step 8."""
    directory = tmp_path_factory.mktemp("ddp-four")
    clean = FOUR.train_distributed(FOUR_MODEL, DATA, nodes=4)
    with pytest.raises(WorkerFailedError):
        FOUR.train_distributed(
            FOUR_MODEL, DATA, nodes=4, checkpoint_dir=str(directory), max_restarts=0,
            fault_injection=[{"kind": "raise", "rank": 3, "step": 10}],
        )  # fmt: skip
    return clean, directory


@pytest.mark.parametrize("nodes", [2, 3])
def test_ddp_saved_with_four_workers_resumes_with_two_and_three(
    nodes: int, saved_at_four: tuple[TrainingResult, Path], tmp_path: Path
) -> None:
    """A replica's checkpoint at another number of workers: the same global batches in the
    same order, so the run ends where the uninterrupted one did (up to float rounding)."""
    clean, saved = saved_at_four
    shutil.copytree(saved, tmp_path / "ckpt")
    resumed = FOUR.train_distributed(
        FOUR_MODEL, DATA, nodes=nodes, checkpoint_dir=str(tmp_path / "ckpt"), resume="auto"
    )
    assert resumed["resumed_from"].endswith("step-00000008.pt")
    assert resumed["steps"] == clean["steps"]
    a, b = clean.model.state_dict(), resumed.model.state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)

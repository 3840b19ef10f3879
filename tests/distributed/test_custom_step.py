"""Your own train_step on real gloo ranks: the same guarantees as the built-in step."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ai_distributed_training import DistributedTraining, WorkerFailedError
from ai_distributed_training.errors import DESYNC_CHECK
from ai_distributed_training.launch.debug import debug_launcher
from tests.batch_helpers import (
    custom_weights,
    gan_discriminator,
    gan_generator,
    gan_step,
    mismatch_message,
    on_this_rank,
    uneven_step,
)
from tests.helpers import bitwise_equal

pytestmark = pytest.mark.distributed


def test_a_batch_additive_train_step_gives_the_same_weights_at_1_2_and_3_nodes() -> None:
    """A frozen teacher (left unwrapped: nothing to sync) and a student; ctx.backward weights
    each rank's mean for the global batch, so the split does not matter."""
    one = custom_weights(1)
    for ranks in (2, 3):
        per_rank = debug_launcher(on_this_rank, num_processes=ranks)
        for name, value in one.items():
            assert torch.equal(per_rank[0][name], per_rank[-1][name]), name
            torch.testing.assert_close(per_rank[0][name], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(one["student.weight"], custom_weights_untrained())


def custom_weights_untrained() -> torch.Tensor:
    from tests.batch_helpers import teacher_and_student

    return teacher_and_student()["student"].weight.detach()


def test_a_step_taken_on_some_ranks_only_stops_the_job_with_a_clear_error() -> None:
    """Rank 0 steps its optimizer, rank 1 does not: the models would drift apart silently."""
    messages = debug_launcher(mismatch_message, num_processes=2, timeout_s=30)
    for message in messages:
        assert message.startswith("StepMismatchError: the ranks' train_step calls differ at")
        assert "'step:student': 1.0" in message and "'step:student': 0.0" in message


def test_under_fsdp_torchs_desync_check_names_a_step_taken_on_some_ranks_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under FSDP ctx.step is a collective, so the ranks wait in different collectives; with
    the variable the error names the mismatch within seconds, not after collective_timeout_s
    (without it: see test_restart_rule's timeout message)."""
    x = torch.randn(256, 6, generator=torch.Generator().manual_seed(0))
    with monkeypatch.context() as env, pytest.raises(WorkerFailedError) as caught:
        env.setenv(*DESYNC_CHECK.split("="))
        DistributedTraining(
            epochs=1,
            strategy="fsdp",
            train_step=partial(uneven_step, model="model"),  # the one model's name
            runs_dir=None,
            max_restarts=0,
        ).train_distributed(nn.Linear(6, 2), (x, (x[:, 0] > 0).long()), nodes=2)
    assert "Detected mismatch between collectives" in str(caught.value)


def test_a_killed_gan_worker_resumes_bitwise(tmp_path: Path) -> None:
    """Two models, two optimizers, noise from ctx.generator: a worker killed mid-epoch, the
    job restarted from the last checkpoint, both models end bitwise where they would have."""
    data = TensorDataset(torch.randn(640, 8, generator=torch.Generator().manual_seed(0)))
    trainer = DistributedTraining(
        epochs=2, batch_size=64, checkpoint_every=3, train_step=gan_step, runs_dir=None
    )
    models = {"G": gan_generator, "D": gan_discriminator}
    clean = trainer.train_distributed(models, data, nodes=2)
    killed = trainer.train_distributed(
        models,
        data,
        nodes=2,
        checkpoint_dir=str(tmp_path / "ckpt"),
        fault_injection=[{"kind": "kill", "rank": 1, "step": 14}],
    )
    assert killed["restarts"] == 1 and bitwise_equal(clean, killed)
    assert set(clean.model) == {"G", "D"} and clean["steps"] == 20
    assert {"train_d_loss", "train_g_loss"} <= set(clean["history"][-1])


def test_two_models_and_two_optimizers_under_fsdp_resume_bitwise(tmp_path: Path) -> None:
    """Each model sharded on its own, both optimizers in one sharded checkpoint."""
    from tests.batch_helpers import gan_fsdp_resume_is_bitwise

    results = debug_launcher(gan_fsdp_resume_is_bitwise, str(tmp_path), num_processes=2)
    assert results == [True, True]

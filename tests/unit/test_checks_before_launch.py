"""The caller's checks before launch (issue: no silent wrong result, no false refusal): what the
workers would train is never refused, the caller's objects stay as they were, and mistakes
that used to fail in every worker fail in the caller, naming the value."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ai_distributed_training import ConfigError, DistributedTraining
from ai_distributed_training.config import TrainingSettings
from ai_distributed_training.config.sections import sections_of
from ai_distributed_training.host import host_memory_bytes
from ai_distributed_training.prepare import model_checks, prepare
from ai_distributed_training.prepare.model_checks import resolve_result_weights

pytestmark = pytest.mark.usefixtures("no_launch")
X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
LABELS = (X[:, 0] > 0).long()


def check(model: Any, data: Any, **settings: Any) -> Any:
    """Prepare a 2-node job (every check before launch), launching nothing."""
    return prepare(model, data, TrainingSettings(nodes=2, runs_dir=None, **settings))


# --- silent wrong results ------------------------------------------------------------------------


def test_whole_number_float_labels_with_two_outputs_train_as_classes() -> None:
    """They trained MSE against a broadcast target, with only torch's warning."""
    job = check(nn.Linear(4, 2), (X, LABELS.double()))
    assert job.data.info.task == "classification" and job.data.info.num_outputs == 2
    assert job.data.y.dtype == torch.long and torch.equal(job.data.y, LABELS)
    assert any("trained as 2 classes" in note for note in job.notes)


@pytest.mark.parametrize(
    ("model", "y", "match"),
    [
        (nn.Linear(4, 2), X[:, 0], r"not class indices 0..1: MSE would only broadcast"),
        (nn.Linear(4, 3), torch.randn(64, 2), r"outputs \(2, 3\) and the regression targets"),
    ],
)
def test_a_shape_pair_only_broadcasting_accepts_is_refused(
    model: nn.Module, y: torch.Tensor, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        check(model, (X, y))


# --- false refusals and side effects of the check ------------------------------------------------


class Spy(nn.Module):
    """Calls torch.distributed in forward (as a mixture-of-experts layer does) and counts its
    calls (a side effect the check must not leave on the caller's instance)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear, self.calls = nn.Linear(4, 2), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x) * (dist.get_rank() + 1)


def test_a_model_calling_torch_distributed_is_not_refused_and_not_touched() -> None:
    spy = Spy()
    before = {k: v.clone() for k, v in spy.state_dict().items()}
    check(spy, (X, LABELS))
    assert spy.calls == 0 and spy.training  # the check ran on a copy
    assert all(torch.equal(before[k], v) for k, v in spy.state_dict().items())


class Counter(nn.Linear):
    def __init__(self) -> None:
        super().__init__(4, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x)


def test_the_dry_run_leaves_the_callers_module_as_it_was_and_can_be_turned_off() -> None:
    model = Counter()
    check(model, (X, LABELS))
    assert model.calls == 0
    with pytest.raises(ConfigError, match="mat1 and mat2"):
        check(Counter(), (torch.randn(64, 5), LABELS))
    check(Counter(), (torch.randn(64, 5), LABELS), dry_run=False)  # left to the workers


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(16, 8), nn.Linear(8, 16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def test_per_position_targets_from_arrays_are_dry_run_with_their_own_shape() -> None:
    """(ids[:, :-1], ids[:, 1:]) for a causal LM: the example targets had shape [2]."""
    ids = torch.randint(0, 16, (32, 9), generator=torch.Generator().manual_seed(1))
    job = check(TinyLM(), (ids[:, :-1], ids[:, 1:]))
    assert job.data.info.task == "classification"


def conv_net() -> nn.Module:
    """A CNN whose last BatchNorm2d sees 1x1 maps (as a ResNet's on 32x32 images)."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


def test_batchnorm2d_on_1x1_maps_with_a_one_sample_share_names_drop_last() -> None:
    """It crashed a worker at the last, 2+1 split batch, after a whole epoch."""
    images, y = torch.randn(67, 3, 8, 8), torch.arange(67) % 2  # the last batch: 3 = 2 + 1
    fixed = {"batch_size": 32, "validation_split": 0.0}
    with pytest.raises(ConfigError, match=r"BatchNorm2d layers need at least 2 sample.*drop_last"):
        check(conv_net, (images, y), **fixed)
    check(conv_net, (images, y), drop_last=True, **fixed)
    check(conv_net, (torch.randn(68, 3, 8, 8), torch.arange(68) % 2), **fixed)


# --- errors that used to come from the workers ---------------------------------------------------


@pytest.mark.parametrize(
    ("model", "data", "match"),
    [
        (nn.Linear(4, 2), (X, torch.arange(64) % 11), r"labels go up to 10 .* outputs 2 classes"),
        (nn.ReLU(), (X, LABELS), r"has no parameters .*nothing to train"),
        (nn.Linear(4, 2).requires_grad_(False), (X, LABELS), r"every one frozen"),
        (nn.Linear(4, 2), (X, torch.zeros(64, 2, 3, dtype=torch.long)), "fails on a batch"),
        (nn.Linear(4, 2), (torch.complex(X, X), LABELS), r"X is complex"),
        (nn.Linear(4, 2), {"samples": 10**11, "features": 128}, r"samples=100000000000 .* GiB"),
    ],
)
def test_mistakes_that_used_to_fail_in_the_workers(model: Any, data: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check(model, data)


def test_a_model_bigger_than_the_host_is_refused() -> None:
    def huge() -> nn.Module:  # 4 TB of float32 weights, built on the meta device only
        return nn.Sequential(nn.Linear(4, 2**20), nn.Linear(2**20, 2**20), nn.Linear(2**20, 2))

    with pytest.raises(ConfigError, match=r"weights take 4,096.* GiB, more than this host"):
        check(huge, (X, LABELS))


def test_under_fsdp_the_host_holds_its_workers_shards_only() -> None:
    """Built sharded from birth, a model bigger than one host trains on several: the check
    counts this host's share (1.5 x this host's memory, 4 hosts of 2 workers: a quarter)."""
    width = int((1.5 * host_memory_bytes() / 4) ** 0.5)

    def big() -> nn.Module:  # built on the meta device only
        return nn.Sequential(nn.Linear(4, width), nn.Linear(width, width), nn.Linear(width, 2))

    hosts = {"nodes": 8, "nnodes": 4, "rdzv_endpoint": "127.0.0.1:29400", "dry_run": False}
    with pytest.raises(ConfigError, match=r"weights take .* GiB, more than this host"):
        prepare(big, (X, LABELS), TrainingSettings(runs_dir=None, **hosts))
    prepare(big, (X, LABELS), TrainingSettings(runs_dir=None, strategy="fsdp", **hosts))


def test_result_weights_auto_exports_only_a_sharded_model_too_big_for_the_caller() -> None:
    def sizes(strategy: str, free: int, runs_dir: str | None = "runs") -> str:
        settings = TrainingSettings(runs_dir=runs_dir, strategy=strategy)
        skeleton = nn.Linear(1024, 1024, device="meta")  # 4 MiB of weights
        with mock.patch.object(model_checks, "available_memory_bytes", return_value=free):
            resolved = resolve_result_weights(sections_of(settings), skeleton)
        return resolved.get("result_weights", settings.result_weights)

    assert sizes("fsdp", free=4 * 2**20) == "safetensors"
    assert sizes("fsdp", free=64 * 2**20) == "module"
    assert sizes("ddp", free=4 * 2**20) == "module"  # every DDP worker holds it whole anyway
    assert sizes("fsdp", free=4 * 2**20, runs_dir=None) == "module"  # nowhere to write


def cross_entropy_step(ctx: Any, batch: Any) -> dict[str, Any]:
    x, y = batch
    loss = F.cross_entropy(ctx.models["model"](x), y)
    ctx.backward(loss)
    ctx.step("model")
    return {"loss": loss}


def _step(kind: str) -> Any:
    """A train_step with one mistake in it."""

    def step(ctx: Any, batch: Any) -> Any:
        x, y = batch
        name = "generator" if kind == "unknown model" else "model"
        out = ctx.models[name](x)
        loss = F.cross_entropy(out, y, reduction="none" if kind == "vector loss" else "mean")
        if kind == "detached loss":
            loss = loss.detach()
        if kind == "zero count":
            ctx.backward((loss, 0))
        else:
            ctx.backward(loss)
        ctx.step("model")
        returns = {"None": None, "tensor": loss, "string": {"loss": "low"}}
        return returns.get(kind, {"loss": loss})

    return step


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("None", r"must return a dict of named losses .* returned None"),
        ("tensor", r"must return a dict of named losses"),
        ("string", r"returned 'loss': 'low'; each value must be a number"),
        ("unknown model", r"no model named 'generator'; the models are \['model'\]"),
        ("vector loss", r"ctx.backward takes a scalar loss .* shape \[2\]"),
        ("detached loss", r"detached from the models' graph"),
        ("zero count", r"counts sum to 0 over the global batch"),
    ],
)
def test_train_step_mistakes_fail_in_the_caller(kind: str, match: str) -> None:
    with pytest.raises(ConfigError, match=rf"train_step step fails on two samples.*{match}"):
        check(nn.Linear(4, 2), (X, LABELS), train_step=_step(kind))


def test_train_step_arity_and_optimizer_factory_mistakes_fail_in_the_caller() -> None:
    with pytest.raises(ConfigError, match=r"takes 1 positional argument but 2 were given"):
        check(nn.Linear(4, 2), (X, LABELS), train_step=lambda ctx: {"loss": 0.0})
    with pytest.raises(ConfigError, match=r"optimizer factory returned NoneType"):
        check(
            nn.Linear(4, 2),
            (X, LABELS),
            train_step=cross_entropy_step,
            optimizer=lambda params: None,
        )


def test_the_train_steps_dry_run_leaves_the_callers_models_and_generators() -> None:
    model = nn.Linear(4, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    check(model, (X, LABELS), train_step=cross_entropy_step)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize(
    ("model", "settings", "match"),
    [
        (nn.Linear(4, 2), {"fsdp_blocks": ["Block"]}, r"fsdp_blocks names \['Block'\], no mod"),
        (
            nn.Linear(4, 2),
            {"activation_checkpointing": ["Block"]},
            r"activation_checkpointing names \['Block'\], no module class of the model",
        ),
        (
            nn.Linear(4, 2),
            {"train_step": cross_entropy_step, "loss_fn": F.cross_entropy},
            r"loss_fn apply to the built-in step; your train_step computes its own",
        ),
        ({}, {}, r"the model dict is empty"),
        ({1: nn.Linear(4, 2)}, {}, r"keys \[1\] are not names"),
        ({"G": 3}, {}, r"no dict of models either \(\{'G': 'int'\}"),
        (
            nn.Linear(4, 2),
            {"loss_fn": lambda out, y: (F.cross_entropy(out, y, reduction="sum"), "n")},
            r"loss_fn's count must return one number .* returned 'n'",
        ),
    ],
)
def test_settings_silently_ignored_or_badly_reported(model: Any, settings: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check(model, (X, LABELS), **settings)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_checkpoint_dir_of_another_user_is_named() -> None:
    """Its .lock (root's, read-only to others) gave a bare PermissionError."""
    top = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        directory = top / "ckpt"
        directory.mkdir()
        (directory / ".lock").write_text("")
        os.chmod(directory / ".lock", 0o644)
        os.chmod(directory, 0o777)
        os.chmod(top, 0o777)
        os.seteuid(65534)  # nobody, for this call only
        try:
            with pytest.raises(ConfigError) as caught:
                DistributedTraining(runs_dir=None).train_distributed(
                    {"model_name": "m"}, {"samples": 8, "features": 2}, nodes=1,
                    checkpoint_dir=str(directory),
                )  # fmt: skip
        finally:
            os.seteuid(0)
    finally:
        shutil.rmtree(top)
    assert "its lock file cannot be opened (Permission denied" in str(caught.value)
    assert "owned by uid 0, mode -rw-r--r--" in str(caught.value)


def test_no_numpy_float_labels_regression_is_broken() -> None:
    """A true regression (non-integral float targets, one output) stays a regression."""
    job = check(nn.Linear(4, 1), (X, np.linspace(0, 1, 64)))
    assert job.data.info.task == "regression" and not job.notes


def test_activation_checkpointing_asked_twice_for_the_built_in_transformer() -> None:
    gpt = {"model_name": "gpt", "architecture": "transformer", "activation_checkpointing": True}
    tokens = {"samples": 64, "seq_len": 8, "vocab_size": 16}
    check(
        {**gpt, "activation_checkpointing": False},
        tokens,
        activation_checkpointing=["DecoderBlock"],
    )
    with pytest.raises(ConfigError, match=r"spec's activation_checkpointing=True and the"):
        check(gpt, tokens, activation_checkpointing=["DecoderBlock"])


def test_the_batchnorm_share_counts_no_held_out_split_beside_validation_data() -> None:
    """With validation_data nothing is held out: 64 samples, batch 56 over 2 workers leave a
    last batch of 8 (4 each), not the 1 each a 10% held-out split (58 samples) would leave."""
    bn = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match=r"BatchNorm1d layers need at least 2 sample"):
        check(bn, (X, LABELS), batch_size=56, validation_split=0.1)
    check(bn, (X, LABELS), batch_size=56, validation_split=0.1, validation_data=(X, LABELS))


def test_init_from_weights_that_do_not_fit_the_model_are_named(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    good = net().state_dict()
    cases = {
        "missing": ({k: v for k, v in good.items() if k != "2.bias"}, r"lacks 2\.bias"),
        "extra": (
            {**good, "3.weight": torch.zeros(1)},
            r"has weights the model has not: 3\.weight",
        ),
        "shape": ({**good, "0.weight": torch.zeros(8, 5)}, r"other shapes: 0\.weight \(8, 5\)"),
    }
    for name, (state, match) in cases.items():
        save_file(state, tmp_path / f"{name}.safetensors")
        with pytest.raises(ConfigError, match=match):
            check(net, (X, LABELS), init_from=str(tmp_path / f"{name}.safetensors"))
    with pytest.raises(ConfigError, match=r"is not a \.safetensors file"):
        check(net, (X, LABELS), init_from=str(tmp_path / "nothing.bin"))
    save_file(good, tmp_path / "good.safetensors")
    job = check(net, (X, LABELS), init_from=str(tmp_path / "good.safetensors"))
    assert job.checkpoint.init_from == str((tmp_path / "good.safetensors").resolve())


def test_init_from_without_a_tied_alias_is_accepted(tmp_path: Path) -> None:
    """Hugging Face saves a tied output head once (under the embedding's name)."""
    from safetensors.torch import save_file

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = nn.Embedding(16, 4), nn.Linear(4, 16, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(ids)).mean(1)

    save_file({"embed.weight": torch.zeros(16, 4)}, tmp_path / "tied.safetensors")
    ids = torch.randint(0, 16, (32, 3))
    check(Tied, (ids, ids[:, 0]), init_from=str(tmp_path / "tied.safetensors"))


def test_init_from_a_checkpoint_is_verified_as_a_resume_would_be(tmp_path: Path) -> None:
    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    foreign = tmp_path / "step-00000001.pt"
    torch.save({"model": net().state_dict()}, foreign)  # not written by this library
    with pytest.raises(ConfigError, match="is not a checkpoint of this library"):
        check(net, (X, LABELS), init_from=str(foreign))
    unfinished = tmp_path / "step-00000002.dcp"
    unfinished.mkdir()  # a sharded save that never committed
    with pytest.raises(ConfigError, match="no COMMITTED marker"):
        check(net, (X, LABELS), init_from=str(unfinished))

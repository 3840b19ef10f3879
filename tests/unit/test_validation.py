"""Bad input gets a clear error naming the value and what is accepted, before any worker starts."""

from __future__ import annotations

import importlib.util
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ai_distributed_training import (
    ConfigError,
    ConfigTypeError,
    DistributedTraining,
    GPUAcceleratedTraining,
)
from ai_distributed_training.config import TrainingSettings
from ai_distributed_training.data import resolve_data
from ai_distributed_training.models import resolve_model
from ai_distributed_training.prepare import prepare
from ai_distributed_training.training.dryrun import dry_run_module

MODEL = {"model_name": "m", "hidden_sizes": [8]}
DATA = {"samples": 100, "features": 4}


#: Every error here must come before a worker starts.
pytestmark = pytest.mark.usefixtures("no_launch")


def train(model: Any = MODEL, data: Any = DATA, **settings: Any) -> None:
    DistributedTraining().train_distributed(model, data, **settings)


@pytest.mark.parametrize(
    ("nodes", "error"),
    [
        (0, ConfigError),
        (-1, ConfigError),
        (2.5, ConfigTypeError),
        ("3", ConfigTypeError),
        (True, ConfigTypeError),
    ],
)
def test_nodes_must_be_a_positive_integer(nodes: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=rf"nodes={nodes!r}.*positive integer"):
        train(nodes=nodes)


def test_config_errors_are_value_errors_and_type_errors_are_both() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigTypeError, TypeError) and issubclass(ConfigTypeError, ValueError)


def test_more_nodes_than_training_samples() -> None:
    with pytest.raises(ConfigError, match=r"nodes=95 is more than the 90 training samples"):
        train(nodes=95)


def test_global_batch_smaller_than_nodes() -> None:
    with pytest.raises(ConfigError, match=r"batch_size=2 .*nodes=3"):
        train(nodes=3, batch_size=2)


def test_unknown_setting_is_named_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting 'lerning_rate'.*'learning_rate'"):
        train(lerning_rate=0.1)
    with pytest.raises(ConfigError, match=r"unknown setting 'epoch'.*'epochs'"):
        DistributedTraining(epoch=3)


def test_model_dict_without_model_name() -> None:
    with pytest.raises(ConfigError, match=r"'model_name'"):
        train(model={"architecture": "mlp"})


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"architecture='resnet'.*'mlp', 'linear' or 'transformer'"
    ):
        train(model={"model_name": "m", "architecture": "resnet"})


def test_unknown_model_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown model key 'hiden_sizes'.*'hidden_sizes'"):
        train(model={"model_name": "m", "hiden_sizes": [3]})


def test_model_of_an_unaccepted_type() -> None:
    with pytest.raises(ConfigTypeError, match=r"model of type int is not accepted"):
        train(model=3)


def test_factory_must_return_a_module() -> None:
    with pytest.raises(ConfigTypeError, match=r"returned int, not an nn.Module"):
        train(model=lambda: 3)


@pytest.mark.parametrize("key", ["samples", "features"])
@pytest.mark.parametrize("value", [0, -5])
def test_non_positive_samples_or_features(key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=rf"{key}={value} is invalid"):
        train(data={**DATA, key: value})


def test_x_and_y_of_different_lengths() -> None:
    with pytest.raises(ConfigError, match=r"len\(X\)=10, len\(y\)=9"):
        train(data=(torch.randn(10, 3), torch.zeros(9).long()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_inputs(bad: float) -> None:
    x = np.random.default_rng(0).normal(size=(20, 3))
    x[7, 1] = bad
    with pytest.raises(ConfigError, match=r"X contains NaN or inf values \(first rows: \[7\]\)"):
        train(data=(x, np.zeros(20, dtype=np.int64)))
    y = np.zeros(20)
    y[3] = bad
    with pytest.raises(ConfigError, match=r"y contains NaN or inf"):
        train(data=(np.zeros((20, 3)), y))


def test_data_of_an_unaccepted_type() -> None:
    with pytest.raises(ConfigTypeError, match=r"data of type set is not accepted"):
        train(data={1, 2})


def test_missing_data_file() -> None:
    with pytest.raises(ConfigError, match=r"does not exist"):
        train(data="/nonexistent/data.npz")


def test_unsupported_file_suffix(tmp_path: Any) -> None:
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(ConfigError, match=r"unsupported suffix '.xlsx'.*\.npy"):
        train(data=str(path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_gpus_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"use_gpus=True but CUDA is not available"):
        GPUAcceleratedTraining().train_distributed(MODEL, DATA, nodes=2)


def test_module_instance_and_factory_are_accepted_before_launch() -> None:
    # Valid inputs reach the launcher (here: the guard), proving validation let them through.
    with pytest.raises(AssertionError, match="launched"):
        train(model=nn.Linear(4, 2))
    with pytest.raises(AssertionError, match="launched"):
        train(model=lambda: nn.Linear(4, 2))


def test_runs_dir_that_cannot_be_written() -> None:
    with pytest.raises(ConfigError, match=r"runs_dir='/dev/null/runs' cannot be written"):
        train(runs_dir="/dev/null/runs")


def test_tensorboard_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorboard" else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"pip install 'ai-distributed-training\[tensorboard\]'"):
        train(tensorboard=True)


def test_checkpoint_dir_that_cannot_be_written() -> None:
    with pytest.raises(ConfigError, match=r"checkpoint_dir='/dev/null/ckpt' cannot be written"):
        train(checkpoint_dir="/dev/null/ckpt")


def test_resume_from_a_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"resume='/nope.pt': no such checkpoint;"):
        train(resume="/nope.pt")


def test_fault_injection_spec_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"fault_injection.0.kind='explode'.*'kill'"):
        train(fault_injection=[{"kind": "explode"}])
    with pytest.raises(ConfigError, match=r"unknown setting 'fault_injection.0.stp'"):
        train(fault_injection=[{"kind": "kill", "stp": 3}])


def test_fp16_on_cpu_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"precision='fp16' needs GPUs"):
        train(precision="fp16")


def test_cpu_offload_needs_fsdp_and_gpus() -> None:
    with pytest.raises(ConfigError, match=r"cpu_offload=True .* needs strategy='fsdp'"):
        train(cpu_offload=True)
    with pytest.raises(ConfigError, match=r"cpu_offload=True .* needs use_gpus=True"):
        train(cpu_offload=True, strategy="fsdp")


def test_warmup_steps_and_ratio_are_exclusive() -> None:
    with pytest.raises(ConfigError, match=r"warmup_steps=3 and warmup_ratio=0.1"):
        train(warmup_steps=3, warmup_ratio=0.1)


def test_classification_task_needs_integer_labels() -> None:
    with pytest.raises(ConfigError, match=r"task='classification' needs integer class labels"):
        train(data=(np.zeros((10, 2)), np.linspace(0, 1, 10)), task="classification")


def test_task_conflicting_with_a_synthetic_spec() -> None:
    with pytest.raises(ConfigError, match=r"task='regression' conflicts with the data"):
        train(task="regression")


def test_validation_data_must_match_the_inputs() -> None:
    with pytest.raises(ConfigError, match=r"validation_data inputs have shape \(3,\)"):
        train(
            data=(np.zeros((10, 4)), np.zeros(10, dtype=np.int64)),
            validation_data=(np.zeros((5, 3)), np.zeros(5, dtype=np.int64)),
        )


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"seed": 2**64}, r"seed=18446744073709551616 .*less than or equal to 4611686018427387904"),
        ({"collective_timeout_s": float("inf")}, r"collective_timeout_s=inf .*finite"),
        ({"collective_timeout_s": 1e300}, r"collective_timeout_s=1e\+300 .*604800"),
        ({"rdzv_timeout_s": float("nan")}, r"rdzv_timeout_s=nan .*finite"),
        ({"learning_rate": float("inf")}, r"learning_rate=inf .*finite"),
        ({"max_grad_norm": float("nan")}, r"max_grad_norm=nan .*finite"),
        ({"callbacks": [object()]}, r"callbacks=.*object is not a Callback"),
        ({"fault_injection": [{"kind": "kill", "rank": 3}], "nodes": 2}, r"rank=3 .*0\.\.1"),
    ],
)
def test_settings_that_used_to_reach_the_workers(setting: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        train(**setting)


def test_more_workers_on_a_host_than_it_can_run() -> None:
    big = {"samples": 10**7, "features": 1}
    with pytest.raises(ConfigError, match=r"nodes=1000000 puts 1000000 worker processes .*per CPU"):
        train(data=big, nodes=10**6, batch_size=10**7)


def _batchnorm_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def test_batchnorm_with_a_one_sample_share_names_drop_last() -> None:
    """A last global batch of 1 sample: BatchNorm1d fails in every worker after the launch."""
    data = {"samples": 100, "features": 4}
    with pytest.raises(ConfigError, match=r"BatchNorm1d layers need at least 2 .*drop_last=True"):
        train(_batchnorm_mlp, data, nodes=2, batch_size=33, validation_split=0.0)
    settings = TrainingSettings(nodes=2, batch_size=33, validation_split=0.0, drop_last=True)
    prepare(_batchnorm_mlp, data, settings)  # full batches only: 17 and 16 per worker


def test_sync_batchnorm_needs_gpus() -> None:
    with pytest.raises(ConfigError, match=r"sync_batchnorm=True needs GPUs"):
        train(sync_batchnorm=True)


class _NeedsRealValues(nn.Module):
    def __init__(self, unused_width: int = 0) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.unused = nn.Linear(unused_width, unused_width)  # makes it big: checked on meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * float(x.abs().sum().item() >= 0)  # cannot run on meta tensors


def test_a_model_that_does_not_fit_the_data_fails_before_any_worker_starts() -> None:
    """A shape bug used to cost a launch and a traceback per worker."""
    with pytest.raises(
        ConfigError,
        match=r"fails on a batch shaped like the data \(inputs \(2, 4\) "
        r"float32, targets \(2,\) int64\): RuntimeError: mat1 and mat2",
    ):
        train(nn.Linear(5, 2))
    with pytest.raises(ConfigError, match=r"fails on a batch .*: RuntimeError: mat1 and mat2"):
        train(lambda: nn.Linear(5, 2))  # a factory's small model, checked for real on the CPU
    big = (5, 2**13), (2**13, 2**11)  # 64 MiB and more: checked on the meta device
    with pytest.raises(ConfigError, match=r"fails on a batch .*: RuntimeError: .*\[5, 8192\]"):
        train(lambda: nn.Sequential(*(nn.Linear(*shape) for shape in big)))
    module = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), nn.Linear(8, 2))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    prepare(module, DATA, TrainingSettings())  # the caller's module: checked, left as it was
    assert module.training and all(
        torch.equal(v, before[k]) for k, v in module.state_dict().items()
    )
    prepare(_NeedsRealValues, DATA, TrainingSettings())  # small: run for real, and it passes
    big_needs_real_values = partial(_NeedsRealValues, unused_width=2**13)  # 256 MiB, on meta
    prepare(big_needs_real_values, DATA, TrainingSettings())  # not checkable there: left to workers


def test_a_small_factory_model_is_dry_run_on_the_cpu_leaving_the_callers_generators() -> None:
    source = resolve_model(lambda: nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5)))
    info = resolve_data(DATA).info
    skeleton = source.skeleton(info)
    assert next(skeleton.parameters()).is_meta
    torch.manual_seed(3)
    before = torch.get_rng_state()
    checked = dry_run_module(source, skeleton, info, trains_on_cpu=True)
    assert not next(checked.parameters()).is_meta  # built for real (imports: test_startup)
    assert torch.equal(torch.get_rng_state(), before)  # its weights' draws were undone
    # For GPU training it stays on meta: a CPU pass could refuse code that only CUDA runs.
    assert dry_run_module(source, skeleton, info, trains_on_cpu=False) is skeleton

    def meta_only() -> nn.Module:  # say, code that wants a device this caller does not have
        module = nn.Linear(4, 2)
        if not module.weight.is_meta:
            raise RuntimeError("cannot build here")
        return module

    odd = resolve_model(meta_only)
    odd_skeleton = odd.skeleton(info)
    kept = dry_run_module(odd, odd_skeleton, info, trains_on_cpu=True)
    assert kept is odd_skeleton  # the meta pass is kept

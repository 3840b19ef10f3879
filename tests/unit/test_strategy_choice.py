"""strategy="auto": FSDP exactly when a full replica would not fit a worker's budget."""

from __future__ import annotations

import pytest
import torch

from ai_distributed_training.config import TrainingSettings, validate
from ai_distributed_training.config.sections import sections_of
from ai_distributed_training.data import resolve_data
from ai_distributed_training.errors import ConfigError
from ai_distributed_training.models import resolve_model
from ai_distributed_training.planner.plan import choose_strategy, replica_bytes
from ai_distributed_training.prepare import prepare
from ai_distributed_training.topology import RankEnv
from ai_distributed_training.training.strategies import make_strategy
from ai_distributed_training.training.strategies.fsdp import FSDPStrategy

MODEL = resolve_model({"model_name": "m", "hidden_sizes": [100]})  # 10*100+100 + 100*2+2 params
INFO = resolve_data({"samples": 64, "features": 10}).info


def test_replica_bytes_counts_parameters_gradients_and_adamw_state() -> None:
    settings = TrainingSettings(batch_size=1, nodes=1)
    params = 10 * 100 + 100 + 100 * 2 + 2
    activations = replica_bytes(MODEL, INFO, sections_of(settings)) - 16 * params
    assert 0 < activations < 4 * 1000  # one sample's saved activations, a few hundred floats


def test_auto_picks_fsdp_only_when_the_replica_does_not_fit() -> None:
    settings = TrainingSettings(strategy="auto")
    need = replica_bytes(MODEL, INFO, sections_of(settings))
    assert choose_strategy(MODEL, INFO, sections_of(settings), budget_bytes=10 * need) == "ddp"
    assert (
        choose_strategy(MODEL, INFO, sections_of(settings), budget_bytes=need) == "fsdp"
    )  # over 80%


def test_auto_is_resolved_before_any_worker_starts() -> None:
    settings = TrainingSettings(strategy="auto", nodes=2, batch_size=8)
    prepared = prepare({"model_name": "m"}, {"samples": 64, "features": 10}, settings)
    assert prepared.parallel.strategy == "ddp"  # a small MLP fits this host many times


def test_unknown_strategy_is_named() -> None:
    with pytest.raises(ConfigError, match=r"strategy.*zero3"):
        validate(TrainingSettings, {"strategy": "zero3"}, "setting")


def test_fsdp_on_gpus_computes_in_bf16_and_reduces_in_fp32() -> None:
    env = RankEnv(rank=0, local_rank=0, world_size=2)
    fsdp, ddp = (sections_of(TrainingSettings(strategy=s)).parallel for s in ("fsdp", "ddp"))
    cuda, cpu_device = torch.device("cuda", 0), torch.device("cpu")
    gpu = make_strategy(fsdp, env=env, device=cuda, blocks=["Linear"], compute_dtype=torch.bfloat16)
    assert isinstance(gpu, FSDPStrategy)  # built without touching CUDA: nothing wrapped yet
    policy = gpu.options["mp_policy"]
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    cpu = make_strategy(
        fsdp, env=env, device=cpu_device, blocks=["Linear"], compute_dtype=torch.bfloat16
    )
    assert isinstance(cpu, FSDPStrategy) and cpu.options == {}  # fp32 on CPU
    plain = make_strategy(ddp, env=env, device=cpu_device, blocks=[], compute_dtype=None)
    assert not isinstance(plain, FSDPStrategy)

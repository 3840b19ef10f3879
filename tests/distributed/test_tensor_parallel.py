"""Tensor parallelism (``strategy="tp"``) and 2-D (``"fsdp+tp"``) on real gloo processes: the
same weights as DDP (exact global batch over the data-parallel groups only), a killed worker
resumed bitwise, and checkpoints resumed at other numbers of workers.

The runs are shared: the uninterrupted run of each strategy is the reference of its kill and
of its resumes at other sizes, and is compared with DDP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from ai_distributed_training import ConfigError, DistributedTraining, TrainingResult
from ai_distributed_training.data import resolve_data
from ai_distributed_training.models import resolve_model
from ai_distributed_training.planner.counting import ModelCount, count_source, parameter_layout
from tests.helpers import bitwise_equal, fsdp_initial_model

# 12 heads of width 4: split evenly over 2, 3 and 4 workers.
GPT = {"model_name": "gpt", "architecture": "transformer", "d_model": 48, "layers": 2, "heads": 12}
TOKENS = {"samples": 320, "seq_len": 8, "vocab_size": 32}
SETTINGS = {"epochs": 1, "batch_size": 32, "learning_rate": 0.05, "optimizer": "sgd",
            "checkpoint_every": 3, "runs_dir": None}  # fmt: skip
TRAINER = DistributedTraining(**SETTINGS)
# The Llama runs clip every step: the global norm over split and whole gradients.
LLAMA_TRAINER = DistributedTraining(**SETTINGS, max_grad_norm=0.05)


class Chains(Dataset[dict[str, torch.Tensor]]):
    """Token chains (each id one more than the last) for a causal LM's own loss."""

    def __init__(self, n: int = 192, length: int = 12, vocab: int = 48) -> None:
        start = torch.randint(0, vocab, (n, 1), generator=torch.Generator().manual_seed(0))
        self.ids = (start + torch.arange(length)) % vocab

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def llama() -> LlamaForCausalLM:
    """A Llama from a config (grouped-query attention: 6 query heads, 2 key/value heads)."""
    config = LlamaConfig(
        vocab_size=48, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def _close(a: TrainingResult, b: TrainingResult) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:  # the same math, other reduction orders: equal up to float rounding
        torch.testing.assert_close(sa[name], sb[name], rtol=0, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def tp_run(tmp_path_factory: pytest.TempPathFactory) -> TrainingResult:
    """The built-in transformer split over 4 workers, checkpointed every 3 steps."""
    ckpt = tmp_path_factory.mktemp("tp") / "ckpt"
    return TRAINER.train_distributed(
        GPT, TOKENS, nodes=4, strategy="tp", checkpoint_dir=str(ckpt), keep_checkpoints=10
    )


def test_tp_trains_the_weights_ddp_trains(tp_run: TrainingResult) -> None:
    ddp = TRAINER.train_distributed(fsdp_initial_model(GPT, TOKENS, seed=0), TOKENS, nodes=2)
    _close(tp_run, ddp)
    assert tp_run["history"][-1]["train_loss"] == pytest.approx(
        ddp["history"][-1]["train_loss"], rel=1e-6
    )  # each sample counted once, not once per worker of a group
    assert tp_run["samples_seen"] == ddp["samples_seen"]
    trained = tp_run["history"][-1]["samples_per_second"] * tp_run["train_time_s"]  # one epoch
    assert trained == pytest.approx(tp_run["samples_seen"], rel=1e-6)
    # Each worker holds a quarter of every split matrix (embeddings and norms whole), to the
    # byte what the planner counts: fp32 weights, gradients and SGD's momentum.
    replica = ddp["model_state_bytes_per_worker"][0]
    assert max(tp_run["model_state_bytes_per_worker"]) < 0.45 * replica
    held = _planned(GPT, TOKENS).tensor_parallel_parameters(4)
    assert tp_run["model_state_bytes_per_worker"] == [12 * held] * 4
    two_d = TRAINER.train_distributed(GPT, TOKENS, nodes=4, strategy="fsdp+tp", tp_size=2)
    _close(two_d, ddp)


def _planned(model: object, data: object) -> ModelCount:
    """The planner's count of ``model`` (flops and activations left out for a Dataset)."""
    if isinstance(data, Dataset):
        rows, tp_dims = parameter_layout(resolve_model(model).build(resolve_data(data).info))
        return ModelCount(0, 0, 0.0, 0.0, rows=rows, tp_dims=tp_dims)
    return count_source(resolve_model(model), resolve_data(data).info)


def test_tp_killed_worker_resumes_bitwise(tp_run: TrainingResult, tmp_path: Path) -> None:
    killed = TRAINER.train_distributed(
        GPT, TOKENS, nodes=4, strategy="tp", checkpoint_dir=str(tmp_path), max_restarts=1,
        fault_injection=[{"kind": "kill", "rank": 2, "step": 8}],
    )  # fmt: skip
    assert killed["restarts"] == 1
    assert bitwise_equal(killed, tp_run)


@pytest.mark.parametrize("nodes", [2, 3])
def test_tp_checkpoint_of_4_workers_resumes_on(nodes: int, tp_run: TrainingResult) -> None:
    step_6 = Path(tp_run["checkpoint_dir"]) / "step-00000006.dcp"
    resumed = TRAINER.train_distributed(GPT, TOKENS, nodes=nodes, strategy="tp", resume=str(step_6))
    assert resumed["resumed_from"] == str(step_6) and resumed["steps"] == tp_run["steps"]
    _close(resumed, tp_run)


@pytest.fixture(scope="module")
def fsdp_tp_run(tmp_path_factory: pytest.TempPathFactory) -> TrainingResult:
    """A Llama from a config on 2 groups of 2 workers, checkpointed every 3 steps."""
    ckpt = tmp_path_factory.mktemp("fsdp_tp") / "ckpt"
    return LLAMA_TRAINER.train_distributed(
        llama, Chains(), nodes=4, strategy="fsdp+tp", tp_size=2, checkpoint_dir=str(ckpt),
        keep_checkpoints=10,
    )  # fmt: skip


def test_llama_fsdp_tp_and_tp_train_the_weights_ddp_trains(fsdp_tp_run: TrainingResult) -> None:
    start = fsdp_initial_model(llama, Chains(), seed=0)  # the weights both are born with
    ddp = LLAMA_TRAINER.train_distributed(start, Chains(), nodes=2)
    _close(fsdp_tp_run, ddp)
    held = _planned(llama, Chains()).tensor_parallel_parameters(2, dp=2)
    assert fsdp_tp_run["model_state_bytes_per_worker"] == [12 * held] * 4
    tp = LLAMA_TRAINER.train_distributed(llama, Chains(), nodes=2, strategy="tp")  # 2 kv heads: 2
    _close(tp, ddp)


def test_fsdp_tp_killed_worker_resumes_bitwise(fsdp_tp_run: TrainingResult, tmp_path: Path) -> None:
    killed = LLAMA_TRAINER.train_distributed(
        llama, Chains(), nodes=4, strategy="fsdp+tp", tp_size=2, checkpoint_dir=str(tmp_path),
        max_restarts=1, fault_injection=[{"kind": "kill", "rank": 3, "step": 5}],
    )  # fmt: skip
    assert killed["restarts"] == 1
    assert bitwise_equal(killed, fsdp_tp_run)


@pytest.mark.parametrize(("nodes", "tp_size"), [(2, 2), (3, 1)])
def test_fsdp_tp_checkpoint_of_2_by_2_resumes_on(
    nodes: int, tp_size: int, fsdp_tp_run: TrainingResult
) -> None:
    step_3 = Path(fsdp_tp_run["checkpoint_dir"]) / "step-00000003.dcp"
    resumed = LLAMA_TRAINER.train_distributed(
        llama, Chains(), nodes=nodes, strategy="fsdp+tp", tp_size=tp_size, resume=str(step_3)
    )  # one group of 2; three groups of 1 (FSDP alone)
    _close(resumed, fsdp_tp_run)


def dropout_mlp() -> nn.Module:
    """Dropout on activations every worker of a group holds whole (after the rowwise layer)."""
    return nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 8), nn.Dropout(0.5),
                         nn.Linear(8, 2))  # fmt: skip


def test_a_groups_workers_draw_the_same_dropout_also_after_a_resume_elsewhere(
    tmp_path: Path,
) -> None:
    """Workers of a group that drew other dropout masks would compute different whole
    activations: their whole parameters (the last Linear) would drift apart."""
    data, plan = {"samples": 256, "features": 8}, {"0": "colwise", "2": "rowwise"}
    trainer = DistributedTraining(epochs=2, batch_size=32, runs_dir=None, tp_plan=plan)
    first = trainer.train_distributed(
        dropout_mlp, data, nodes=2, strategy="tp", checkpoint_dir=str(tmp_path), checkpoint_every=3
    )
    assert first["weights_in_sync"]
    resumed = trainer.train_distributed(  # reseeded: another number of workers
        dropout_mlp, data, nodes=3, strategy="tp", resume=str(tmp_path / "step-00000012.dcp")
    )
    assert resumed["resumed_from"] and resumed["weights_in_sync"]


def test_tensor_parallel_refusals_name_the_value() -> None:
    with pytest.raises(ConfigError, match=r"needs tp_size.*divisor of the 4 workers \(got 3\)"):
        TRAINER.train_distributed(GPT, TOKENS, nodes=4, strategy="fsdp+tp", tp_size=3)
    with pytest.raises(ConfigError, match=r"heads=12 do not split over 5"):
        TRAINER.train_distributed(GPT, TOKENS, nodes=5, strategy="tp")
    with pytest.raises(ConfigError, match=r"num_key_value_heads=2 do not split over 3"):
        TRAINER.train_distributed(llama, Chains(), nodes=3, strategy="tp")
    mlp = {"model_name": "NeuralNet_Model"}
    with pytest.raises(ConfigError, match=r"has no tensor-parallel plan"):
        TRAINER.train_distributed(mlp, {"samples": 64, "features": 8}, nodes=2, strategy="tp")
    with pytest.raises(ConfigError, match=r"pattern 'nothing\.\*' names no module"):
        TRAINER.train_distributed(
            GPT, TOKENS, nodes=2, strategy="tp", tp_plan={"nothing.*": "colwise"}
        )
    data = {"samples": 64, "features": 8}  # dropout_mlp: Linear(8, 12) colwise, (12, 8) rowwise
    plan = {"0": "colwise", "2": "rowwise"}
    with pytest.raises(ConfigError, match=r"0\.weight has 12 along its split dimension 0, which 5"):
        TRAINER.train_distributed(dropout_mlp, data, nodes=5, strategy="tp", tp_plan=plan)
    with pytest.raises(ConfigError, match=r"'1': the tensor-parallel plan splits it colwise, but"):
        TRAINER.train_distributed(
            dropout_mlp, data, nodes=2, strategy="tp", tp_plan={"1": "colwise"}
        )
    with pytest.raises(ConfigError, match=r"tp_size and tp_plan are settings of strategy"):
        TRAINER.train_distributed(GPT, TOKENS, nodes=2, tp_size=2)

"""Building with parameters on the meta device, and the verdict on recreating a model's
weights module by module (what FSDP's sharded-from-birth build relies on)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from ai_distributed_training.models.meta import build_on_meta
from ai_distributed_training.training.strategies.birth import materialize
from tests.distributed.test_sharded_birth import SkippedByInitWeights

CPU = torch.device("cpu")


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 2), nn.BatchNorm1d(2))


class ZeroedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        nn.init.zeros_(self.head.weight)  # custom init in the constructor


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))  # values the constructor chose; no initialiser


def loaded() -> nn.Module:
    model = mlp()
    model.load_state_dict(mlp().state_dict())
    return model


def reads_a_weight() -> nn.Module:
    model = mlp()
    if float(model[0].weight.abs().sum()) == 0:  # needs real values: fails on meta
        raise AssertionError("unreachable")
    return model


def frozen() -> nn.Module:
    model = mlp()
    model[0].requires_grad_(False)
    return model


def llama(tie: bool = True) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def test_parameters_are_meta_and_buffers_real() -> None:
    built = build_on_meta(mlp)
    assert built.why_not is None
    assert all(p.is_meta for p in built.model.parameters())
    assert torch.equal(built.model[3].running_var, torch.ones(2))  # computed in __init__


def test_constructions_module_by_module_init_cannot_redo_are_named() -> None:
    assert "zero_" in (build_on_meta(ZeroedHead).why_not or "")
    assert "'scale'" in (build_on_meta(Scaled).why_not or "")
    assert "copy_" in (build_on_meta(loaded).why_not or "")
    cannot = build_on_meta(reads_a_weight)
    assert cannot.model is None and "cannot be built on the meta device" in (cannot.why_not or "")
    # What changes no values, and torch's own layers (MultiheadAttention re-inits its child):
    assert build_on_meta(frozen).why_not is None
    assert build_on_meta(lambda: nn.MultiheadAttention(8, 2)).why_not is None


def test_materialized_weights_depend_on_the_seed_only_and_are_a_real_init() -> None:
    a, b, c = (build_on_meta(mlp).model for _ in range(3))
    for model, seed in ((a, 5), (b, 5), (c, 6)):
        assert materialize(model, CPU, seed) is None
    sa, sb, sc = (m.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["0.weight"], sc["0.weight"])
    assert sa["0.weight"].abs().max() <= 8**-0.5 and sa["0.weight"].std() > 0.1
    assert torch.equal(sa["1.weight"], torch.ones(16)) and torch.equal(
        sa["1.bias"], torch.zeros(16)
    )


def test_a_hugging_face_model_from_a_config_is_recreated_with_its_own_init() -> None:
    """Hugging Face's _init_weights (std 0.02 for Llama), ties kept, rotary buffers computed:
    the materialized model computes what the same weights in a normally built one compute."""
    built = build_on_meta(llama)
    assert built.why_not is None
    model = built.model
    assert materialize(model, CPU, seed=1) is None
    assert model.lm_head.weight is model.model.embed_tokens.weight
    up = model.model.layers[0].mlp.up_proj.weight
    assert 0.015 < float(up.std()) < 0.025 and torch.equal(model.model.norm.weight, torch.ones(32))
    reference = llama()
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, 64, (2, 10))
    assert torch.equal(model(ids).logits, reference(ids).logits)


def test_a_parameter_no_initialiser_writes_is_named() -> None:
    built = build_on_meta(SkippedByInitWeights)
    assert built.why_not is None  # every module has an initialiser (the model's) ...
    assert materialize(built.model, CPU, seed=0) == "scale"  # ... which skips this one

"""Tensor-parallel plans (which Linear layers split how), and the built-in transformer's weights
saved before its attention projections were split."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ai_distributed_training.config import ModelSpec
from ai_distributed_training.models.parallel_plan import resolved_plan
from ai_distributed_training.models.transformer import Decoder, DecoderBlock


def test_the_transformer_and_a_hugging_face_llama_bring_their_plans() -> None:
    spec = ModelSpec(model_name="gpt", architecture="transformer", d_model=8, layers=2, heads=2)
    plan = resolved_plan(Decoder(spec, seq_len=4, vocab_size=16), None)
    assert plan["blocks.1.q"] == plan["blocks.0.mlp.0"] == "colwise"
    assert plan["blocks.1.proj"] == plan["blocks.1.mlp.2"] == "rowwise"
    assert len(plan) == 12  # 6 layers a block
    with torch.device("meta"):
        config = LlamaConfig(
            hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
        )
        llama = LlamaForCausalLM(config)
    plan = resolved_plan(llama, None)  # under the base model's prefix
    assert plan["model.layers.0.self_attn.k_proj"] == "colwise"
    assert plan["model.layers.0.mlp.down_proj"] == "rowwise"
    assert "lm_head" not in plan and "model.embed_tokens" not in plan


def test_a_user_plan_overrides_and_bad_plans_are_named() -> None:
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    assert resolved_plan(mlp, {"0": "colwise", "2": "rowwise"}) == {"0": "colwise", "2": "rowwise"}
    with pytest.raises(ValueError, match="Sequential has no tensor-parallel plan"):
        resolved_plan(mlp, None)
    with pytest.raises(ValueError, match=r"pattern 'fc\*' names no module"):
        resolved_plan(mlp, {"fc*": "colwise"})
    with pytest.raises(ValueError, match=r"style 'colwise_rep' .* the styles are"):
        resolved_plan(mlp, {"0": "colwise_rep"})


def test_weights_of_the_fused_qkv_layout_load_into_q_k_v() -> None:
    torch.manual_seed(0)
    block, x = DecoderBlock(8, 2, 0.0), torch.randn(3, 5, 8)
    state = block.state_dict()
    fused = {k: v for k, v in state.items() if k.split(".")[0] not in ("q", "k", "v")}
    for kind in ("weight", "bias"):  # the old layer: query rows first, then key, then value
        fused[f"qkv.{kind}"] = torch.cat([state[f"{n}.{kind}"] for n in "qkv"])
    other = DecoderBlock(8, 2, 0.0)
    other.load_state_dict(fused)
    torch.testing.assert_close(other(x), block(x), rtol=0, atol=0)

"""Token data and the built-in GPT-style decoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ai_distributed_training.config import ModelSpec, TrainingSettings, validate
from ai_distributed_training.data import resolve_data
from ai_distributed_training.data.synthetic import TokenDataSpec, make_tokens
from ai_distributed_training.errors import ConfigError
from ai_distributed_training.models import resolve_model
from ai_distributed_training.models.transformer import Decoder
from ai_distributed_training.planner.counting import count_model
from ai_distributed_training.prepare import prepare

GPT = {"model_name": "gpt", "architecture": "transformer", "d_model": 32, "heads": 4}


def test_synthetic_tokens_predict_the_next_token() -> None:
    source = resolve_data({"samples": 50, "seq_len": 12, "vocab_size": 20, "seed": 1})
    info = source.info
    assert (info.tokens, info.input_shape, info.num_outputs, info.task) == (
        True,
        (12,),
        20,
        "classification",
    )
    x, y = source.open().batch(torch.arange(50))
    assert x.dtype == y.dtype == torch.long and x.shape == y.shape == (50, 12)
    assert torch.equal(y[:, :-1], x[:, 1:]) and int(x.max()) < 20


def test_a_large_vocabulary_gets_a_sparse_learnable_chain() -> None:
    """Above 4,096 tokens the chain is sparse (a dense one held vocab x vocab floats, and
    samples x vocab more per position: 12.8 GB for 100k sequences of a 32,000-token
    vocabulary): the same sequences every time, each token followed by at most 64 others,
    so the next token is far more predictable than a uniform guess."""
    spec = TokenDataSpec(samples=400, seq_len=64, vocab_size=32_000, seed=2)
    ids = make_tokens(spec)
    assert ids.shape == (400, 65) and torch.equal(ids, make_tokens(spec))
    assert int(ids.min()) >= 0 and int(ids.max()) < 32_000
    current, following = ids[:, :-1].reshape(-1), ids[:, 1:].reshape(-1)
    pairs, counts = torch.unique(current * 32_000 + following, return_counts=True)
    per_token = torch.zeros(32_000, dtype=torch.long).index_add_(0, pairs // 32_000, counts)
    assert int(torch.bincount(pairs // 32_000).max()) <= 64  # successors per token
    p = counts / per_token[pairs // 32_000]
    entropy = float(-(counts * p.log()).sum() / counts.sum())
    assert entropy < 0.5 * math.log(32_000)


def test_tokenized_arrays_are_checked() -> None:
    ids = np.random.default_rng(0).integers(0, 9, size=(30, 9))
    info = resolve_data({"tokens": ids}).info
    assert info.input_shape == (8,) and info.num_outputs == 9
    assert resolve_data({"tokens": ids, "vocab_size": 100}).info.num_outputs == 100
    with pytest.raises(ConfigError, match=r"token ids must be in 0\.\.4"):
        resolve_data({"tokens": ids, "vocab_size": 5})
    with pytest.raises(ConfigError, match="2-D integer array"):
        resolve_data({"tokens": ids[0]})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['seq_len'\]"):
        resolve_data({"tokens": ids, "seq_len": 8})


def test_architecture_must_fit_the_kind_of_data() -> None:
    with pytest.raises(ConfigError, match="the transformer needs token data"):
        prepare(GPT, {"samples": 20, "features": 4}, TrainingSettings())
    with pytest.raises(ConfigError, match="token sequences need architecture='transformer'"):
        prepare(
            {"model_name": "m"}, {"samples": 20, "seq_len": 4, "vocab_size": 8}, TrainingSettings()
        )
    with pytest.raises(ConfigError, match="d_model=30 must be a multiple of heads=4"):
        validate(ModelSpec, {**GPT, "d_model": 30}, "model key")


def _decoder(**changes: object) -> Decoder:
    torch.manual_seed(0)
    return Decoder(validate(ModelSpec, {**GPT, **changes}, "model key"), seq_len=10, vocab_size=16)


def test_decoder_is_causal() -> None:
    model = _decoder().eval()
    ids = torch.randint(16, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 16  # change only the future of position 5
    a, b = model(ids), model(changed)
    assert a.shape == (2, 10, 16)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_activation_checkpointing_recomputes_the_same_gradients() -> None:
    ids = torch.randint(16, (3, 10))
    grads = []
    for checkpointing in (False, True):
        model = _decoder(activation_checkpointing=checkpointing)
        torch.nn.functional.cross_entropy(model(ids).transpose(1, 2), ids).backward()
        grads.append([p.grad for p in model.parameters()])
    for g0, g1 in zip(*grads, strict=True):
        torch.testing.assert_close(g0, g1)


def test_planner_counts_the_transformer_on_token_inputs() -> None:
    source = resolve_model({**GPT, "layers": 2})
    info = resolve_data({"samples": 8, "seq_len": 10, "vocab_size": 16}).info
    with torch.device("meta"):
        model = source.build(info)
    count = count_model(model, info.input_shape, info.task, tokens=True)
    assert count.parameters == sum(p.numel() for p in _decoder(layers=2).parameters())
    assert count.flops_per_sample > 6 * count.parameters  # ~6 x params x tokens, plus attention
    one_block = sum(p.numel() for p in _decoder(layers=2).blocks[0].parameters())
    assert count.largest_block_parameters == one_block  # a block, not the ModuleList of all

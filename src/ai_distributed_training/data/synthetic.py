"""Synthetic data: a learnable table labelled by a fixed random teacher, and token sequences
from a fixed random bigram chain. Each worker regenerates them from the spec (nothing to ship)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import SyntheticDataSpec, TokenDataSpec
from .types import DataInfo, TensorReader, token_info

TEACHER_WIDTH = 32  # hidden width of the random teacher that labels synthetic data

# --- synthetic data ------------------------------------------------------------------------------


def make_synthetic(spec: SyntheticDataSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic dataset labelled by a fixed random teacher (a one-hidden-layer tanh net).

    The teacher runs in float64 so that labels do not depend on thread count or BLAS order.
    """
    g = torch.Generator().manual_seed(spec.seed)
    x = torch.randn(spec.samples, spec.features, generator=g)
    outputs = spec.classes if spec.task == "classification" else 1
    w1 = torch.randn(spec.features, TEACHER_WIDTH, generator=g, dtype=torch.float64)
    w2 = torch.randn(TEACHER_WIDTH, outputs, generator=g, dtype=torch.float64)
    teacher = torch.tanh(x.double() @ w1 / math.sqrt(spec.features)) @ w2
    if spec.task == "classification":
        return x, teacher.argmax(dim=1)
    y = teacher[:, 0] / teacher[:, 0].std()
    noise = 0.1 * torch.randn(spec.samples, generator=g, dtype=torch.float64)
    return x, (y + noise).float()


@dataclass(frozen=True)
class SyntheticSource:
    """Synthetic data: each worker regenerates it from the spec (cheap, nothing to ship)."""

    spec: SyntheticDataSpec
    info: DataInfo

    @classmethod
    def from_spec(cls, spec: SyntheticDataSpec) -> SyntheticSource:
        outputs = spec.classes if spec.task == "classification" else 1
        desc = f"synthetic {spec.task}: {spec.samples} x {spec.features}"
        info = DataInfo(spec.samples, (spec.features,), spec.task, outputs, desc)
        return cls(spec, info)

    def stage(self, job_dir: Path) -> SyntheticSource:
        return self

    def open(self) -> TensorReader:
        return TensorReader(*make_synthetic(self.spec))


# --- token sequences -----------------------------------------------------------------------------


#: Vocabularies above this get a sparse chain (a dense one holds vocab_size**2 floats: 4 GB at
#: 32,000 tokens, and its rows for every sequence at once, samples x vocab_size more).
DENSE_CHAIN_MAX_VOCAB = 4096
#: Successors each token may have in a sparse chain.
SPARSE_SUCCESSORS = 64
#: Equally likely draws tabulated per token of a sparse chain.
DRAW_TABLE = 256


def make_tokens(spec: TokenDataSpec) -> torch.Tensor:
    """``samples`` sequences of ``seq_len + 1`` token ids from a fixed random bigram chain with
    peaked transitions: learnable (a model that learns the chain beats log(vocab_size)). A
    vocabulary above :data:`DENSE_CHAIN_MAX_VOCAB` draws each next token among
    :data:`SPARSE_SUCCESSORS` fixed successors of the current one (memory: vocab x 64)."""
    g = torch.Generator().manual_seed(spec.seed)
    if spec.vocab_size > DENSE_CHAIN_MAX_VOCAB:
        return _sparse_chain(spec, g)
    transitions = torch.softmax(3.0 * torch.randn(spec.vocab_size, spec.vocab_size, generator=g), 1)
    ids = torch.empty(spec.samples, spec.seq_len + 1, dtype=torch.long)
    ids[:, 0] = torch.randint(spec.vocab_size, (spec.samples,), generator=g)
    for t in range(spec.seq_len):
        ids[:, t + 1] = torch.multinomial(transitions[ids[:, t]], 1, generator=g)[:, 0]
    return ids


def _sparse_chain(spec: TokenDataSpec, g: torch.Generator) -> torch.Tensor:
    """The chain of a large vocabulary: each token's successors are :data:`SPARSE_SUCCESSORS`
    fixed ones with peaked weights, tabulated as :data:`DRAW_TABLE` equally likely draws
    (each successor as often as its weight says, to 1/256): one gather per position, so
    8,192 sequences of 2,048 tokens take about a second."""
    vocab = spec.vocab_size
    weights = torch.softmax(3.0 * torch.randn(vocab, SPARSE_SUCCESSORS, generator=g), 1)
    successors = torch.randint(vocab, (vocab, SPARSE_SUCCESSORS), generator=g)
    # Draw k of a token picks the successor whose cumulative weight first exceeds k/256.
    edges = weights.cumsum(1)
    edges[:, -1] = 1.0  # rounding: every draw lands in some successor
    quantiles = (torch.arange(DRAW_TABLE, dtype=edges.dtype) + 0.5) / DRAW_TABLE
    picks = torch.searchsorted(edges, quantiles.expand(vocab, -1).contiguous())
    table = successors.gather(1, picks.clamp_(max=SPARSE_SUCCESSORS - 1)).view(-1)
    by_position = torch.empty(spec.seq_len + 1, spec.samples, dtype=torch.long)
    by_position[0] = torch.randint(vocab, (spec.samples,), generator=g)
    draws = torch.randint(DRAW_TABLE, (spec.seq_len, spec.samples), generator=g)
    for t in range(spec.seq_len):  # index_select: 40x faster than 2-D indexing or take
        by_position[t + 1] = table.index_select(0, by_position[t] * DRAW_TABLE + draws[t])
    return by_position.t().contiguous()


@dataclass(frozen=True)
class SyntheticTokenSource:
    """Synthetic token sequences: each worker regenerates them from the spec."""

    spec: TokenDataSpec
    info: DataInfo

    @classmethod
    def from_spec(cls, spec: TokenDataSpec) -> SyntheticTokenSource:
        desc = f"synthetic tokens: {spec.samples} x {spec.seq_len}, vocabulary {spec.vocab_size}"
        return cls(spec, token_info(spec.samples, spec.seq_len, spec.vocab_size, desc))

    def stage(self, job_dir: Path) -> SyntheticTokenSource:
        return self

    def open(self) -> TensorReader:
        ids = make_tokens(self.spec)
        return TensorReader(ids[:, :-1], ids[:, 1:])

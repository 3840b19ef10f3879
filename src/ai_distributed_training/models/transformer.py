"""A small GPT-style decoder (``"architecture": "transformer"``) for token data.

Pre-norm blocks of causal self-attention (``F.scaled_dot_product_attention``) and a 4x GELU MLP,
learned position embeddings, an untied output head. Each :class:`DecoderBlock` is what the FSDP
strategy shards and gathers as one unit; with ``activation_checkpointing`` a block's
activations are recomputed in the backward pass instead of kept.

Tensor parallelism (:data:`TP_PLAN`): the query, key and value projections and the MLP's first
layer are split by output columns, the attention output and the MLP's second layer by input
rows (Megatron's layout), so each rank computes whole heads of its own: the attention takes
its head count from the width it is given (``heads`` over the tensor-parallel ranks).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ModelSpec


class DecoderBlock(nn.Module):
    """x + attention(norm(x)), then x + mlp(norm(x)); attention sees earlier positions only."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.head_dim, self.dropout = d_model // heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.q, self.k, self.v = (nn.Linear(d_model, d_model) for _ in range(3))
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        normed = self.norm1(x)
        # Heads of head_dim each: all of them, or this rank's under tensor parallelism.
        q, k, v = (
            proj(normed).view(batch, length, -1, self.head_dim).transpose(1, 2)
            for proj in (self.q, self.k, self.v)
        )
        p = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, -1))
        out: torch.Tensor = x + self.mlp(self.norm2(x))
        return out

    def _load_from_state_dict(self, state: dict[str, Any], prefix: str, *args: Any) -> None:
        """Weights saved before the projections were split (one fused ``qkv`` layer, query
        rows first) load into ``q``, ``k`` and ``v``."""
        for kind in ("weight", "bias"):
            fused = state.pop(f"{prefix}qkv.{kind}", None)
            if fused is not None:
                for name, part in zip("qkv", fused.chunk(3), strict=True):
                    state[f"{prefix}{name}.{kind}"] = part
        super()._load_from_state_dict(state, prefix, *args)


#: Tensor-parallel styles of a :class:`Decoder`'s modules, by name pattern.
TP_PLAN = {
    "blocks.*.q": "colwise",
    "blocks.*.k": "colwise",
    "blocks.*.v": "colwise",
    "blocks.*.proj": "rowwise",
    "blocks.*.mlp.0": "colwise",
    "blocks.*.mlp.2": "rowwise",
}


class Decoder(nn.Module):
    """Token ids ``(batch, seq_len)`` -> next-token logits ``(batch, seq_len, vocab_size)``."""

    def __init__(self, spec: ModelSpec, seq_len: int, vocab_size: int) -> None:
        super().__init__()
        self.checkpointing = spec.activation_checkpointing
        self.embed = nn.Embedding(vocab_size, spec.d_model)
        self.position = nn.Embedding(seq_len, spec.d_model)
        self.blocks = nn.ModuleList(
            DecoderBlock(spec.d_model, spec.heads, spec.dropout) for _ in range(spec.layers)
        )
        self.norm = nn.LayerNorm(spec.d_model)
        self.head = nn.Linear(spec.d_model, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids) + self.position(positions)
        for block in self.blocks:
            if self.checkpointing and self.training:
                x = cast(torch.Tensor, checkpoint(block, x, use_reentrant=False))
            else:
                x = block(x)
        logits: torch.Tensor = self.head(self.norm(x))
        return logits

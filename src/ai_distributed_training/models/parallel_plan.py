"""Tensor-parallel plans: which of a model's Linear layers are split by columns or by rows.

A plan maps module-name patterns (``fnmatch``: ``*`` matches within and across name parts) to
a style: ``"colwise"`` splits a layer's outputs over the ranks of a group, ``"rowwise"`` its
inputs (Megatron's layout: a colwise layer feeds a rowwise one, one all-reduce after the
pair). The plan is the user's ``tp_plan``, the built-in transformer's, or a Hugging Face
model's ``config.base_model_tp_plan``. Kept apart from the strategy (no torch.distributed
import) so that the caller checks a plan before any worker starts.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

from torch import nn

from .transformer import TP_PLAN, Decoder

#: The styles a plan may name.
STYLES = ("colwise", "rowwise")


def resolved_plan(model: nn.Module, user_plan: Mapping[str, str] | None) -> dict[str, str]:
    """The plan for ``model`` by module name: ``user_plan``'s patterns, else the model's own,
    expanded over its modules. Raises ValueError for a model without a plan, a pattern that
    names no module, or a style other than those of :data:`STYLES`."""
    plan, whose = model_plan(model, user_plan)
    names = [name for name, _ in model.named_modules() if name]
    resolved: dict[str, str] = {}
    for pattern, style in plan.items():
        if style not in STYLES:
            raise ValueError(
                f"{whose} plan's style {style!r} for {pattern!r} is not one this library "
                f"applies; the styles are {sorted(STYLES)}"
            )
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise ValueError(f"{whose} plan's pattern {pattern!r} names no module of the model")
        resolved.update(dict.fromkeys(matched, style))
    return resolved


def split_dims(module: nn.Module, style: str) -> dict[str, int]:
    """How ``parallelize_module`` splits ``module``'s own parameters in ``style``: the split
    dimension by parameter name (a parameter not named stays whole on every rank of the
    group). A colwise Linear splits its weight's and bias's rows (outputs), a rowwise one its
    weight's columns (inputs; its bias is added once, whole); a colwise Embedding splits its
    weight's columns (the embedding width). Raises ValueError for another module."""
    if isinstance(module, nn.Linear):
        return {"weight": 0, "bias": 0} if style == "colwise" else {"weight": 1}
    if isinstance(module, nn.Embedding) and style == "colwise":
        return {"weight": 1}
    raise ValueError(
        f"the tensor-parallel plan splits it {style}, but it is a {type(module).__name__}: "
        "plans split nn.Linear layers (colwise: also nn.Embedding)"
    )


def model_plan(model: nn.Module, user_plan: Mapping[str, str] | None) -> tuple[dict[str, str], str]:
    """``(plan, whose)``: the user's plan, the built-in transformer's, or a Hugging Face
    model's ``base_model_tp_plan`` under its base model's prefix."""
    if user_plan:
        return dict(user_plan), "tp_plan's"
    if isinstance(model, Decoder):
        return dict(TP_PLAN), "the transformer's"
    config = getattr(model, "config", None)
    hf_plan = getattr(config, "base_model_tp_plan", None)
    if hf_plan:
        prefix = getattr(model, "base_model_prefix", "")
        base = prefix if prefix and hasattr(model, prefix) else ""
        return {f"{base}.{k}" if base else k: v for k, v in hf_plan.items()}, "the model's"
    raise ValueError(
        f"{type(model).__name__} has no tensor-parallel plan: strategy 'tp'/'fsdp+tp' needs "
        "the built-in transformer, a Hugging Face model whose config has a "
        "base_model_tp_plan (Llama, Mistral, Qwen, ...), or tp_plan={module pattern: "
        "'colwise' | 'rowwise'}"
    )

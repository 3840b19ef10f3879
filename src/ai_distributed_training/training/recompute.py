"""Activation checkpointing of any model's blocks, by class name (setting
``activation_checkpointing``): a block's forward runs under ``torch.utils.checkpoint`` (the
non-reentrant kind, which works under DDP, FSDP2 and autocast), so its inner activations are
recomputed in the backward pass instead of kept. The weights and gradients are the same."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpoint_blocks(model: nn.Module, names: Sequence[str]) -> int:
    """Recompute the activations of every module of ``model`` whose class is named in
    ``names`` (the outermost of nested matches only); returns how many. Call before the
    strategy wraps the model. The module's class, parameters and state-dict keys stay as
    they were: only the instance's ``forward`` is replaced."""
    wanted, done = set(names), 0
    covered: set[int] = set()  # modules inside a block already checkpointed
    for module in model.modules():
        if id(module) in covered or type(module).__name__ not in wanted:
            continue
        module.forward = partial(_recomputed, module.forward)
        covered.update(id(m) for m in module.modules())
        done += 1
    return done


def _recomputed(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)

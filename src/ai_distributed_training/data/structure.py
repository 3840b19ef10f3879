"""Batches of any structure: a tensor, a tuple or list of them, a dict (any ``Mapping``), or
nested combinations of those; namedtuples keep their type. The first dimension of every tensor
is the sample. Values that are not tensors (strings, numbers, None) pass through untouched.

The helpers here walk such a structure the way Lightning's ``apply_to_collection`` and
Accelerate's ``send_to_device`` do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

#: The keys a dict batch's target is looked up under, in order.
LABEL_KEYS = ("labels", "label", "targets", "target", "y")
#: torch's and Hugging Face's "no target at this position".
IGNORE_INDEX = -100


def map_tensors(batch: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``batch`` with ``fn`` applied to every tensor in it, the structure kept (a Mapping's
    own type where it can be rebuilt from a dict, e.g. a Hugging Face ``BatchEncoding``)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        mapped = {k: map_tensors(v, fn) for k, v in batch.items()}
        try:
            return type(batch)(mapped)  # type: ignore[call-arg]
        except Exception:  # a Mapping type that is not built from a dict
            return mapped
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(map_tensors(v, fn) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_tensors(v, fn) for v in batch)
    return batch


def tensors_of(batch: Any, prefix: str = "batch") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in ``batch`` with its place (``batch['input_ids']``, ``batch[1]``)."""
    if isinstance(batch, torch.Tensor):
        return [(prefix, batch)]
    if isinstance(batch, Mapping):
        return [t for k, v in batch.items() for t in tensors_of(v, f"{prefix}[{k!r}]")]
    if isinstance(batch, (tuple, list)):
        return [t for i, v in enumerate(batch) for t in tensors_of(v, f"{prefix}[{i}]")]
    return []


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor on ``device`` (asynchronous copies from pinned memory)."""
    if isinstance(batch, tuple) and len(batch) == 2 and type(batch) is tuple:  # the common pair
        x, y = batch
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            return x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return map_tensors(batch, lambda t: t.to(device, non_blocking=True))


def num_samples(batch: Any) -> int:
    """The number of samples in ``batch``: the first dimension its tensors agree on.

    Raises:
        ValueError: no tensor in the batch, a 0-dim tensor, or tensors that disagree (each
            named with its length).
    """
    found = tensors_of(batch)
    if not found:
        raise ValueError(f"the batch holds no tensor (got {type(batch).__name__})")
    lengths = {place: (len(t) if t.ndim else None) for place, t in found}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        shown = ", ".join(f"{p}: {n if n is not None else '0-dim'}" for p, n in lengths.items())
        raise ValueError(
            f"the batch's tensors disagree on the number of samples (first dimension): {shown}"
        )
    return next(iter(lengths.values())) or 0


def first_rows(batch: Any, n: int) -> Any:
    """The first ``n`` samples of ``batch`` (``n=0``: an empty batch of the same shapes)."""
    return map_tensors(batch, lambda t: t[:n])


def model_inputs(x: torch.Tensor) -> torch.Tensor:
    """A tensor as a model takes it: float64 and bool become float32 (the weights' dtype);
    narrower floats stay; integers (ids for an embedding) stay integers."""
    if x.dtype == torch.float64 or x.dtype == torch.bool:
        return x.float()
    return x


def batch_inputs(batch: Any) -> Any:
    """:func:`model_inputs` applied to every tensor of a structured batch, except boolean
    masks inside a Mapping (an ``attention_mask`` of bools stays a mask)."""
    if isinstance(batch, Mapping):
        return map_tensors(batch, lambda t: t if t.dtype == torch.bool else model_inputs(t))
    return map_tensors(batch, model_inputs)


def label_key(batch: Mapping[str, Any]) -> str | None:
    """The key of a dict batch's target (the first of :data:`LABEL_KEYS` present), or None."""
    return next((k for k in LABEL_KEYS if k in batch), None)


def target_of(batch: Any) -> Any:
    """A batch's target: a tuple's or list's last element (of two or more), a dict's
    :func:`label_key` value; None for anything else (a lone tensor, a dict without one)."""
    if isinstance(batch, Mapping):
        key = label_key(batch)
        return batch[key] if key is not None else None
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[-1]
    return None


def describe_structure(batch: Any) -> str:
    """A short description: ``{'input_ids': (2, 16) int64, 'labels': (2, 16) int64}``."""
    if isinstance(batch, torch.Tensor):
        return f"{tuple(batch.shape)} {str(batch.dtype).removeprefix('torch.')}"
    if isinstance(batch, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe_structure(v)}" for k, v in batch.items()) + "}"
    if isinstance(batch, (tuple, list)):
        inner = ", ".join(describe_structure(v) for v in batch)
        return f"({inner})" if isinstance(batch, tuple) else f"[{inner}]"
    return type(batch).__name__


def is_pair(batch: Any) -> bool:
    """An ``(inputs, targets)`` pair of tensors (a tuple or list of two, each with a sample
    dimension): the batch the built-in models and the planner take."""
    return (
        type(batch) in (tuple, list)
        and len(batch) == 2
        and all(isinstance(t, torch.Tensor) and t.ndim >= 1 for t in batch)
    )


def largest_label(labels: torch.Tensor) -> int:
    """The largest class label (-100, "no target", left out); 0 when there is none."""
    valid = labels[labels != IGNORE_INDEX]
    return int(valid.max()) if valid.numel() else 0

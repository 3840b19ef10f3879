"""How a batch of any structure becomes model outputs, a loss SUM and the COUNT it is a sum over.

The rules (settings ``forward``, ``loss_fn`` and ``count_fn`` override them):

* **Calling the model.** A dict batch is passed as ``model(**batch)``, less the keys its
  ``forward`` does not take (the target, say, when it has no ``labels`` parameter; as Hugging
  Face's Trainer drops unused columns), unless it takes ``**kwargs``; a tuple or list batch as
  ``model(*batch[:-1])``, its last element the target (``(x, y)`` -> ``model(x)``); a lone tensor
  as ``model(batch)`` with no target. ``forward(model, batch)`` replaces all of this.
* **The target.** A tuple's last element; a dict's ``labels`` (else ``label``, ``targets``,
  ``target``, ``y``) value; none for a lone tensor.
* **The loss.** ``loss_fn(outputs, target)`` (the whole batch as target for a dict batch) may
  return a mean or a ``(sum, count)`` pair; else the model's own ``outputs.loss`` (Hugging Face
  models compute it from ``labels``); else cross-entropy (classification; positions whose target
  is -100 are ignored) or MSE (regression) of the first output and the target.
* **The count** a loss is a mean over: ``count_fn(batch)``; else the valid labels (not -100) of
  per-position targets (``labels[..., 1:]`` for a causal LM, whose loss shifts them); else the
  samples. Counted items are summed over every micro-batch of every rank BEFORE the forward
  passes, so each rank's sum is weighted by the whole global batch's count (see
  :class:`~.builtin_step.BuiltinStep`), and a Hugging Face model is passed ``num_items_in_batch``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config.sections import StepSection
from ..data import Task
from ..data.structure import IGNORE_INDEX, LABEL_KEYS, label_key, num_samples, target_of


class NoTargetError(ValueError):
    """A batch without a target, and a model without its own loss, and no ``loss_fn``."""


@dataclass(frozen=True)
class Objective:
    """How one model is called on a batch and what its loss is (see the module docstring)."""

    task: Task
    forward: Callable[[nn.Module, Any], Any] | None = None
    loss_fn: Callable[..., Any] | None = None
    count_fn: Callable[[Any], Any] | None = None
    #: The model's forward parameter names; None: it takes any keyword (``**kwargs``).
    accepts: frozenset[str] | None = None
    #: Pass ``num_items_in_batch`` to the model (Hugging Face models' loss kwargs).
    takes_num_items: bool = False
    #: The model's own loss shifts its labels (a causal language model).
    shifts_labels: bool = False

    @classmethod
    def of(cls, model: nn.Module, task: Task, step: StepSection) -> Objective:
        """The objective of ``model`` (the unwrapped module) under the ``step`` section's
        ``forward``, ``loss_fn`` and ``count_fn``."""
        params = inspect.signature(model.forward).parameters.values()
        any_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        names = frozenset(p.name for p in params)
        hf = any(c.__name__ == "PreTrainedModel" for c in type(model).__mro__)
        takes = getattr(model, "accepts_loss_kwargs", any_kw and hf)
        takes = takes or "num_items_in_batch" in names
        loss_function = getattr(model, "loss_function", None) if hf else None
        encoder_decoder = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
        shifts = getattr(loss_function, "__name__", "") == "ForCausalLMLoss" and not encoder_decoder
        return cls(
            task=task,
            forward=step.forward,
            loss_fn=step.loss_fn,
            count_fn=step.count_fn,
            accepts=None if any_kw else names,
            takes_num_items=bool(takes),
            shifts_labels=shifts,
        )

    # --- the call -------------------------------------------------------------------------

    def call(self, model: nn.Module, batch: Any, num_items: float | None = None) -> Any:
        """The model's outputs on ``batch``; ``num_items``: the count the model's own loss is
        to divide its sum by (passed as ``num_items_in_batch`` where the model takes it)."""
        if self.forward is not None:
            return self.forward(model, batch)
        if isinstance(batch, Mapping):
            kwargs = dict(batch)
            if self.accepts is not None:  # keys forward does not take (the target, a mask)
                kwargs = {k: v for k, v in kwargs.items() if k in self.accepts}
            if num_items is not None and self._passes_num_items(batch):
                kwargs["num_items_in_batch"] = num_items
            return model(**kwargs)
        if isinstance(batch, (tuple, list)):
            return model(*batch[:-1]) if len(batch) >= 2 else model(*batch)
        return model(batch)

    # --- counts and losses -------------------------------------------------------------------

    def count(self, batch: Any) -> torch.Tensor | None:
        """What this micro-batch's loss is a mean over, known before the forward pass (a
        0-dim tensor), or None when that is its number of samples."""
        if self.count_fn is not None:
            return count_tensor(self.count_fn(batch), "count_fn")
        if self.loss_fn is not None:
            return None  # a user mean: per sample, unless count_fn says otherwise
        if isinstance(batch, Mapping) and "shift_labels" in batch:
            return _valid(torch.as_tensor(batch["shift_labels"]))
        labels = target_of(batch)
        if not isinstance(labels, torch.Tensor) or labels.ndim < 2 or labels.is_floating_point():
            return None  # one target per sample (or regression values): samples are the unit
        if self.shifts_labels and isinstance(batch, Mapping):
            labels = labels[..., 1:]
        return _valid(labels)

    def num_items(self, global_count: torch.Tensor | None, world_size: int) -> float | None:
        """``num_items_in_batch`` for a model that takes it: the global count over the ranks,
        so that DDP's average of the ranks' gradients is the global mean's gradient."""
        if global_count is None or not self.takes_num_items or self.loss_fn is not None:
            return None  # (whether this batch can take it: see _passes_num_items)
        return float(global_count) / world_size

    def loss(
        self, outputs: Any, batch: Any, count: torch.Tensor | None, num_items: float | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(sum, count)`` of this micro-batch's loss; ``count`` None: the sum is over the
        samples (the caller knows how many). ``count``/``num_items``: from :meth:`count` and
        :meth:`num_items`."""
        target = target_of(batch)
        if self.loss_fn is not None:
            got = self.loss_fn(outputs, batch if isinstance(batch, Mapping) else target)
            if isinstance(got, (tuple, list)) and len(got) == 2:
                return _scalar(got[0], "loss_fn's sum"), count_tensor(got[1], "loss_fn's count")
            return _times(_scalar(got, "loss_fn"), count, batch), count
        own = _own_loss(outputs)
        if own is not None:
            if num_items is not None and self._passes_num_items(batch):  # sum / num_items
                return own.float() * num_items, count
            return _times(own.float(), count, batch), count
        if target is None:
            raise NoTargetError(_no_target(batch))
        return default_loss(self.task, prediction(outputs), target), count

    def _passes_num_items(self, batch: Any) -> bool:
        return (
            self.takes_num_items
            and self.forward is None
            and isinstance(batch, Mapping)
            and label_key(batch) == "labels"
        )

    # --- what metrics see --------------------------------------------------------------------

    def scored(self, outputs: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(prediction, target) to score accuracy on, or None: a model's own loss pairs its
        outputs with the labels in its own way (a causal LM shifts them), so it is not scored."""
        target = target_of(batch)
        if not isinstance(target, torch.Tensor) or target.is_floating_point():
            return None
        if self.loss_fn is None and _own_loss(outputs) is not None:
            return None
        try:
            return prediction(outputs), target
        except TypeError:
            return None

    def metric_args(self, outputs: Any, batch: Any) -> tuple[Any, Any]:
        """What a user metric is called with: the outputs (a tensor output as float32) and the
        target (the whole batch for a dict batch), as ``loss_fn`` is."""
        out = outputs.detach().float() if isinstance(outputs, torch.Tensor) else outputs
        return out, batch if isinstance(batch, Mapping) else target_of(batch)


def default_loss(task: Task, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The built-in loss's SUM: cross-entropy (classes in dimension 1, or last for outputs
    shaped ``(*target.shape, classes)``; targets of -100 ignored) or MSE per sample (averaged
    over its values)."""
    out = out.float()
    if task == "classification":
        y = y.long()
        if out.ndim > 2 and out.shape[:-1] == y.shape:  # per position, classes last (N, T, C)
            return F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction="sum")
        return F.cross_entropy(out, y, reduction="sum")  # classes in dimension 1 (N, C, ...)
    y = y.float() if not y.is_floating_point() else y
    flat_out, flat_y = out.reshape(len(y), -1), y.reshape(len(y), -1)
    if flat_out.shape != flat_y.shape:  # MSE would broadcast them, with only a warning
        raise ValueError(
            f"the model's outputs {tuple(out.shape)} and the regression targets "
            f"{tuple(y.shape)} hold different numbers of values per sample (MSE would only "
            f"broadcast them); give the model {flat_y.shape[1]} output(s) per sample, or pass "
            "integer class labels for a classification"
        )
    return F.mse_loss(flat_out, flat_y.to(flat_out.dtype), reduction="sum") / flat_y.shape[1]


def prediction(outputs: Any) -> torch.Tensor:
    """The tensor a model's outputs predict with: itself, a dict's or ``ModelOutput``'s
    ``logits`` (else its first tensor), a tuple's first element."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        if "logits" in outputs:
            return prediction(outputs["logits"])
        values = [v for k, v in outputs.items() if k != "loss" and v is not None]
    elif isinstance(outputs, (tuple, list)):
        values = list(outputs)
    else:
        values = [getattr(outputs, "logits", None)]
    for value in values:
        if isinstance(value, (torch.Tensor, Mapping, tuple, list)):
            return prediction(value)
    raise TypeError(f"the model's outputs ({type(outputs).__name__}) hold no tensor to predict")


def _valid(labels: torch.Tensor) -> torch.Tensor:
    """How many labels are targets (not -100), as a 0-dim float64 tensor like every count."""
    return (labels != IGNORE_INDEX).sum().to(torch.float64)


def _times(mean: torch.Tensor, count: torch.Tensor | None, batch: Any) -> torch.Tensor:
    """A mean loss back to its sum: times its count, else its number of samples."""
    return mean * (count.to(mean.dtype) if count is not None else num_samples(batch))


def _own_loss(outputs: Any) -> torch.Tensor | None:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


def _scalar(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"{what} must return a scalar tensor (the batch's mean loss) or a (sum, count) "
            f"pair; it returned {shape}"
        )
    return value.reshape(()).float()


def count_tensor(value: Any, what: str) -> torch.Tensor:
    """A count as a 0-dim float64 tensor (its value is checked once per step, after the
    counts are summed: checking each one here would wait for the GPU every micro-batch)."""
    try:
        count = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        count = torch.zeros(2)  # not a number: refused below, naming the function
    if count.numel() != 1 or count.dtype == torch.bool or count.is_complex():
        raise ValueError(
            f"{what} must return one number (the items the loss is a mean over); it returned "
            f"{value!r:.60}"
        )
    return count.reshape(()).to(torch.float64)


def _no_target(batch: Any) -> str:
    if isinstance(batch, Mapping):
        held = f"a dict batch with keys {sorted(batch)} and no target key ({', '.join(LABEL_KEYS)})"
    else:
        held = f"a {type(batch).__name__} batch with no target"
    return (
        f"{held}, and the model's outputs have no .loss: put the target under 'labels', return "
        "a loss from the model, or pass loss_fn(outputs, batch)"
    )

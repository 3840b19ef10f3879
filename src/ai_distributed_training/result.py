"""The value ``train_distributed`` returns: a dict of facts, plus the trained model."""

from __future__ import annotations

from typing import Any

from torch import nn

#: Keys shown by ``repr``: a one-line summary, never weights or a long history.
_SUMMARY_KEYS = (
    "model_name",
    "nodes_used",
    "device",
    "status",
    "epochs",
    "final_loss",
    "samples_per_second",
    "wall_time_s",
)


class TrainingResult(dict[str, Any]):
    """A ``dict`` (``result["nodes_used"]``, ``json.dumps`` of it without ``model``) whose
    ``.model`` attribute is the trained ``nn.Module`` in the caller's process."""

    def __init__(self, model: nn.Module, **facts: Any) -> None:
        super().__init__(**facts)
        self.model = model

    def __repr__(self) -> str:
        def fmt(v: Any) -> str:
            return f"{v:.4g}" if isinstance(v, float) else repr(v)

        metrics = self.get("metrics") or {}
        shown = {k: self[k] for k in _SUMMARY_KEYS if k in self}
        for k in ("val_accuracy", "train_accuracy"):
            if metrics.get(k) is not None:
                shown[k] = metrics[k]
                break
        return "TrainingResult(" + ", ".join(f"{k}={fmt(v)}" for k, v in shown.items()) + ")"

    __str__ = __repr__

"""The value ``train_distributed`` returns: a dict of facts, plus the trained model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch import nn

log = logging.getLogger("ai_distributed_training")

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
    ``.model`` attribute is the trained ``nn.Module`` in the caller's process.

    With ``result_weights='safetensors'`` the weights stay on disk (``result["weights_dir"]``)
    and ``.model`` builds the module and loads them the first time it is read (it says so in
    the log: the whole model then sits in this process)."""

    def __init__(self, model: nn.Module | Callable[[], nn.Module], **facts: Any) -> None:
        super().__init__(**facts)
        self._model = model

    @property
    def model(self) -> nn.Module:
        """The trained module (loaded from ``weights_dir`` on first use when exported)."""
        if not isinstance(self._model, nn.Module):
            log.info("loading the trained weights from %s into one module", self.get("weights_dir"))
            self._model = self._model()
        return self._model

    @model.setter
    def model(self, module: nn.Module) -> None:
        self._model = module

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

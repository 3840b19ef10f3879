"""Train PyTorch models data-parallel across N workers on torch.distributed, with one call.

The public names load on first use (PEP 562), so ``import ai_distributed_training`` itself is
cheap: a worker process, which imports this package before anything else, arms its
die-with-its-parent guard before the second or two that importing torch takes.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import DistributedTraining, GPUAcceleratedTraining
    from .config import ModelSpec, SyntheticDataSpec, TrainingSettings
    from .errors import (
        ConfigError,
        ConfigTypeError,
        NonFiniteError,
        RankFailure,
        RendezvousFailedError,
        SimulationError,
        TrainingInterrupted,
        WorkerFailedError,
    )
    from .report import write_report
    from .result import TrainingResult
    from .training.callbacks import Callback, CallbackContext, EarlyStopping
    from .training.trackers import MetricLogger, TrackerRun

logging.getLogger(__name__).addHandler(logging.NullHandler())  # quiet unless the app configures

#: Each public name and the module that defines it.
_EXPORTS = {
    "Callback": "training.callbacks",
    "CallbackContext": "training.callbacks",
    "ConfigError": "errors",
    "ConfigTypeError": "errors",
    "DistributedTraining": "api",
    "EarlyStopping": "training.callbacks",
    "GPUAcceleratedTraining": "api",
    "MetricLogger": "training.trackers",
    "ModelSpec": "config",
    "NonFiniteError": "errors",
    "RankFailure": "errors",
    "RendezvousFailedError": "errors",
    "SimulationError": "errors",
    "SyntheticDataSpec": "config",
    "TrainingInterrupted": "errors",
    "TrainingResult": "result",
    "TrainingSettings": "config",
    "TrackerRun": "training.trackers",
    "WorkerFailedError": "errors",
    "write_report": "report",
}
__all__ = [
    "Callback",
    "CallbackContext",
    "ConfigError",
    "ConfigTypeError",
    "DistributedTraining",
    "EarlyStopping",
    "GPUAcceleratedTraining",
    "MetricLogger",
    "ModelSpec",
    "NonFiniteError",
    "RankFailure",
    "RendezvousFailedError",
    "SimulationError",
    "SyntheticDataSpec",
    "TrackerRun",
    "TrainingInterrupted",
    "TrainingResult",
    "TrainingSettings",
    "WorkerFailedError",
    "write_report",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

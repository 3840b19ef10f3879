"""Train PyTorch models data-parallel across N workers on torch.distributed, with one call."""

import logging

from .api import DistributedTraining, GPUAcceleratedTraining
from .config import ModelSpec, SyntheticDataSpec, TrainingSettings
from .errors import (
    ConfigError,
    ConfigTypeError,
    RankFailure,
    RendezvousFailedError,
    TrainingInterrupted,
    WorkerFailedError,
)
from .report import write_report
from .result import TrainingResult
from .training.callbacks import Callback, CallbackContext, EarlyStopping

logging.getLogger(__name__).addHandler(logging.NullHandler())  # quiet unless the app configures

__all__ = [
    "Callback",
    "CallbackContext",
    "ConfigError",
    "ConfigTypeError",
    "DistributedTraining",
    "EarlyStopping",
    "GPUAcceleratedTraining",
    "ModelSpec",
    "RankFailure",
    "RendezvousFailedError",
    "SyntheticDataSpec",
    "TrainingInterrupted",
    "TrainingResult",
    "TrainingSettings",
    "WorkerFailedError",
    "write_report",
]
__version__ = "0.1.0"

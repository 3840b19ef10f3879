"""Train PyTorch models data-parallel across N workers on torch.distributed, with one call."""

import logging

from .api import DistributedTraining, GPUAcceleratedTraining
from .config import ModelSpec, SyntheticDataSpec, TrainingSettings
from .errors import ConfigError, ConfigTypeError, RankFailure, WorkerFailedError
from .result import TrainingResult

logging.getLogger(__name__).addHandler(logging.NullHandler())  # quiet unless the app configures

__all__ = [
    "ConfigError",
    "ConfigTypeError",
    "DistributedTraining",
    "GPUAcceleratedTraining",
    "ModelSpec",
    "RankFailure",
    "SyntheticDataSpec",
    "TrainingResult",
    "TrainingSettings",
    "WorkerFailedError",
]
__version__ = "0.1.0"

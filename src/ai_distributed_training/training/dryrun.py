"""One forward pass and loss on a tiny batch shaped like the data, in the caller, before any
worker starts: a shape or dtype mistake becomes one clear ``ConfigError`` instead of a launch
and a traceback per worker."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from ..config import TrainingSettings
from ..data import DataSource, example_batch
from ..data.tensors import DatasetSource
from ..errors import ConfigError
from .optim import as_targets, loss_sum_fn


def dry_run(module: nn.Module, data: DataSource, settings: TrainingSettings) -> None:
    """Run ``module`` (a model's :meth:`~..models.ModelSource.skeleton`: the caller's own module,
    or a factory's model on the meta device) and the loss on 2 samples: in eval mode, without
    gradients, its mode restored, on its device.

    Raises:
        ConfigError: the model or the loss fails on a batch of the data's shape and dtype.
    """
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    x, y = _two_samples(data, device)
    task = data.info.task
    was_training = module.training
    module.eval()  # no dropout, no BatchNorm statistics: the caller's module stays as it is
    try:
        with torch.no_grad():
            loss_sum_fn(task, settings.loss_fn)(module(x), as_targets(y, task))
    except NotImplementedError:
        return  # an operation without a meta kernel: the workers will run it for real
    except Exception as err:
        if "meta" in str(err):
            return  # code that needs real values (e.g. .item()): the workers will tell
        raise ConfigError(
            f"the model {type(module).__name__} fails on a batch shaped like the data (inputs "
            f"{_describe(x)}, targets {_describe(y)}): {type(err).__name__}: {err}"
        ) from None
    finally:
        module.train(was_training)


def _two_samples(data: DataSource, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two real samples of a Dataset (its own shapes and dtypes), else zeros like the data's."""
    if isinstance(data, DatasetSource):
        item: Any = data.dataset[0]
        x, y = default_collate([item, item])
        return torch.as_tensor(x).to(device), torch.as_tensor(y).to(device)
    return example_batch(data.info, 2, device)


def _describe(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"

"""One forward pass and loss on a tiny batch like the data's, in the caller, before any worker
starts: a shape, dtype or structure mistake becomes one clear ``ConfigError`` instead of a
launch and a traceback per worker."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import TrainingSettings
from ..data import DataInfo, DataSource, example_batch
from ..data.streams import StreamSource
from ..data.structure import describe_structure, num_samples, to_device
from ..data.tensors import DatasetSource
from ..errors import ConfigError
from ..host import payload_bytes
from ..models import ModelSource, on_meta_device
from .checkpoint import capture_rng, restore_rng
from .metrics import Meter
from .objective import NoTargetError, Objective

#: A factory's model of at most this many bytes of parameters and buffers is dry-run for real
#: on the CPU rather than on the meta device (see :func:`dry_run_module`).
REAL_DRY_RUN_BYTES = 64 * 2**20


def dry_run_module(
    source: ModelSource, skeleton: nn.Module, info: DataInfo, *, trains_on_cpu: bool
) -> nn.Module:
    """The module to dry-run: ``skeleton``, or, where that is a factory's model on the meta
    device of at most :data:`REAL_DRY_RUN_BYTES` and the workers train on CPUs, the factory's
    model built on the CPU.

    Why: operations on meta tensors run torch's Python reference kernels, whose first use
    imports sympy and ``torch._dynamo`` (1-2.5 s here, in the caller, before any worker
    starts), where a small model's real 2-sample pass takes milliseconds and checks more
    (real values, ``.item()``). Only for CPU training: a model meant for GPUs may run code
    that only CUDA has, which the meta pass skips and a CPU pass would wrongly refuse. The
    caller's random generators are left as they were.
    """
    small = payload_bytes([*skeleton.parameters(), *skeleton.buffers()]) <= REAL_DRY_RUN_BYTES
    if not trains_on_cpu or source.factory is None or not on_meta_device(skeleton) or not small:
        return skeleton
    rng = capture_rng()
    try:
        with torch.device("cpu"):
            return source.build(info)
    except Exception:  # e.g. a factory that wants a GPU: the meta pass will do
        return skeleton
    finally:
        restore_rng(rng)


def dry_run(module: nn.Module, data: DataSource, settings: TrainingSettings) -> None:
    """Run ``module`` (:func:`dry_run_module`: the caller's own module, a factory's small model,
    or a factory's model on the meta device), the loss and the metrics on 2 samples: in eval
    mode, without gradients, its mode restored, on its device.

    Raises:
        ConfigError: the model, the loss or a metric fails on a batch like the data's.
    """
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    batch = to_device(_two_samples(data), device)
    objective = Objective.of(module, data.info.task, settings)
    was_training = module.training
    module.eval()  # no dropout, no BatchNorm statistics: the caller's module stays as it is
    try:
        with torch.no_grad():
            _loss_and_metrics(module, batch, objective, settings, device)
    except NoTargetError as err:
        raise ConfigError(str(err)) from None
    except NotImplementedError:
        return  # an operation without a meta kernel: the workers will run it for real
    except Exception as err:
        if "meta" in str(err):
            return  # code that needs real values (e.g. .item()): the workers will tell
        raise ConfigError(
            f"the model {type(module).__name__} fails on a batch shaped like the data "
            f"({_describe(batch)}): {type(err).__name__}: {err}"
        ) from None
    finally:
        module.train(was_training)


def _loss_and_metrics(
    module: nn.Module,
    batch: Any,
    objective: Objective,
    settings: TrainingSettings,
    device: torch.device,
) -> None:
    count = objective.count(batch)
    num_items = 1.0 if count is not None else None
    out = objective.call(module, batch, num_items)
    loss_sum, got = objective.loss(out, batch, count, num_items)
    if device.type == "meta":
        return  # no values to check
    meter = Meter(objective.task, settings.metrics, device)
    samples = num_samples(batch)
    items = got if got is not None else count if count is not None else samples
    scored, args = objective.scored(out, batch), objective.metric_args(out, batch)
    meter.batch(loss_sum, items, samples, scored, args)


def _two_samples(data: DataSource) -> Any:
    """Two real samples of a Dataset, collated as the workers will, else zeros like the
    data's."""
    if isinstance(data, (DatasetSource, StreamSource)):
        return data.example  # validated on it already: no second read
    return example_batch(data.info, 2)


def _describe(batch: Any) -> str:
    if type(batch) is tuple and len(batch) == 2:
        return f"inputs {describe_structure(batch[0])}, targets {describe_structure(batch[1])}"
    return describe_structure(batch)

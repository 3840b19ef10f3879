"""One forward pass and loss on two samples of the data, in the caller, before any worker
starts: a shape, dtype or structure mistake becomes one clear ``ConfigError`` instead of a
launch and a traceback per worker.

The check never changes the caller's objects (it runs on a copy of a module instance; a
factory's model is built anew) and never refuses what the workers would train: a failure whose
cause is the caller's environment (no process group for a model that calls
``torch.distributed``, no GPU for a model meant for one) skips it, with a debug line. The
``dry_run`` setting turns it off.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, is_dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..config.sections import LoopSection, OptimSection, StepSection
from ..data import DataInfo, DataSource, example_batch
from ..data.loading import Micro
from ..data.streams import StreamSource
from ..data.structure import describe_structure, num_samples, target_of, to_device
from ..data.tensors import DatasetSource, TensorSource
from ..errors import ConfigError
from ..models import ModelSource, on_meta_device, weight_bytes
from .checkpoint import capture_rng, restore_rng
from .metrics import Meter
from .objective import NoTargetError, Objective, prediction

log = logging.getLogger(__name__)

#: A factory's model of at most this many bytes of parameters and buffers is dry-run for real
#: on the CPU rather than on the meta device (see :func:`dry_run_module`).
REAL_DRY_RUN_BYTES = 64 * 2**20


@dataclass(frozen=True)
class DryRunFacts:
    """What the dry run saw, for the checks that need the model's real outputs."""

    #: The shape of what the model predicts with (its logits), and of the batch's target.
    prediction_shape: tuple[int, ...] | None
    target_shape: tuple[int, ...] | None
    #: The fewest values any BatchNorm layer normalizes per channel per sample (1 for
    #: BatchNorm1d on feature vectors and BatchNorm2d on 1x1 maps); None: no BatchNorm.
    batchnorm_values_per_sample: int | None
    #: Classes the float targets of whole numbers are (see :func:`float_classes`), or None.
    float_classes: int | None = None


def dry_run_module(
    source: ModelSource, skeleton: nn.Module, info: DataInfo, *, trains_on_cpu: bool
) -> nn.Module | None:
    """The module to dry-run, never the caller's own: a copy of a module instance (of its
    weights when at most :data:`REAL_DRY_RUN_BYTES`, else on the meta device); a factory's
    model built on the CPU when that small and the workers train on CPUs, else ``skeleton``
    (on the meta device). None: the instance cannot be copied (the check is skipped).

    Why a real pass for small models: operations on meta tensors run torch's Python reference
    kernels, whose first use imports sympy and ``torch._dynamo`` (1-2.5 s here, in the
    caller), where a small model's 2-sample pass takes milliseconds and checks more (real
    values, ``.item()``). Only for CPU training: a model meant for GPUs may run code that only
    CUDA has, which the meta pass skips and a CPU pass would wrongly refuse. The caller's
    random generators are left as they were.
    """
    small = weight_bytes(skeleton) <= REAL_DRY_RUN_BYTES
    if source.module is not None or source.parts is not None:
        return module_copy(skeleton, real=small)
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


def module_copy(module: nn.Module, *, real: bool) -> nn.Module | None:
    """A deep copy of ``module`` that shares nothing with it (its Python attributes too, so a
    forward that counts calls or caches leaves the original as it was): with its weights
    (``real``), else with every parameter and buffer on the meta device (no memory). None
    when it cannot be copied."""
    memo: dict[int, Any] = {}
    if not real:
        for p in module.parameters():
            memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
        for b in module.buffers():
            memo[id(b)] = torch.empty_like(b, device="meta")
    try:
        return copy.deepcopy(module, memo)
    except Exception as err:  # a lock, a file handle, a C object: nothing to copy it with
        log.debug("dry run skipped: the model cannot be copied (%s: %s)", type(err).__name__, err)
        return None


def dry_run(
    module: nn.Module, data: DataSource, step: StepSection, task: str | None
) -> DryRunFacts | None:
    """Run ``module`` (from :func:`dry_run_module`), the loss and the metrics of ``step`` on 2
    samples: in eval mode, without gradients, on its device; ``task``: the setting (None:
    inferred). None: skipped (see the module docstring).

    Raises:
        ConfigError: the model, the loss or a metric fails on a batch like the data's.
    """
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    batch = to_device(_two_samples(data), device)
    objective = Objective.of(module, data.info.task, step)
    module.eval()  # no dropout, no BatchNorm statistics
    seen: list[int] = []
    hooks = [
        m.register_forward_pre_hook(lambda _, args: seen.append(_per_sample(args[0])))
        for m in module.modules()
        if isinstance(m, _BatchNorm)
    ]
    classes = None
    try:
        with torch.no_grad():
            count = objective.count(batch)
            if count is not None and device.type != "meta" and float(count) < 0:
                raise ValueError(f"count_fn returned {float(count):g}: never a negative count")
            out = objective.call(module, batch, 1.0 if count is not None else None)
            classes = float_classes(_shape(_predicted(out)), batch, data, task)
            if classes is not None:  # scored as the classes they are
                objective = replace(objective, task="classification")
            _loss_and_metrics(batch, objective, step.metrics, device, out, count)
    except NoTargetError as err:
        raise ConfigError(str(err)) from None
    except NotImplementedError:
        return None  # an operation without a meta kernel: the workers will run it for real
    except Exception as err:
        cause = environment_cause(err)
        if cause is not None or "meta" in str(err):  # "meta": needs real values (.item())
            log.debug("dry run skipped: %s", cause or err)
            return None
        raise ConfigError(
            f"the model {type(module).__name__} fails on a batch shaped like the data "
            f"({_describe(batch)}): {type(err).__name__}: {err}"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()
    predicted, target = _shape(_predicted(out)), _shape(target_of(batch))
    return DryRunFacts(predicted, target, min(seen, default=None), classes)


def dry_run_step(
    module: nn.Module,
    data: DataSource,
    *,
    optim: OptimSection,
    loop: LoopSection,
    step: StepSection,
) -> None:
    """Run the user's ``train_step`` once on two samples, as one rank of one: on ``module``
    (a copy of the caller's models, from :func:`dry_run_module`), with its own optimizers and
    schedulers, their steps included, the caller's random generators restored. A wrong
    signature, a bad return value, an unknown model name, a detached or vector loss or an
    optimizer factory's mistake then fails here, in milliseconds, not in every worker.

    Raises:
        ConfigError: naming the train_step and what failed.
    """
    if on_meta_device(module):
        return  # no values to step (a model too big to copy for real): the workers will tell
    from .context import RankContext  # the loop's machinery, for one rank of one
    from .parts import build_parts
    from .strategies import DDPStrategy

    batch = _two_samples(data)
    samples = num_samples(batch)
    strategy = DDPStrategy(0, 1, torch.device("cpu"))
    ctx = RankContext(optim=optim, loop=loop, step=step, strategy=strategy)
    rng = capture_rng()
    try:
        parts = build_parts(module, None, ctx, total_steps=100)
        parts.step.forward_backward([Micro(batch, samples)], samples, 1)
    except Exception as err:
        cause = environment_cause(err)
        if cause is not None:
            log.debug("dry run of the train_step skipped: %s", cause)
            return
        name = getattr(step.train_step, "__name__", "train_step")
        raise ConfigError(
            f"train_step {name} fails on two samples of the data ({_describe(batch)}), run "
            f"once in the caller on copies of the models: {type(err).__name__}: {err}"
        ) from None
    finally:
        restore_rng(rng)


def environment_cause(err: BaseException) -> str | None:
    """Why ``err`` says more about the caller's process than about the model: a model that
    calls ``torch.distributed`` (no process group here, one in the workers), or wants a GPU
    the caller has not set up. None: the model's own failure."""
    text = str(err)
    if not dist.is_initialized() and ("process group" in text or "torch.distributed" in text):
        return f"the model uses torch.distributed, which the workers set up ({text[:80]})"
    if "CUDA" in text or "cuda" in text or "NCCL" in text:
        return f"the model needs what the workers' devices have ({text[:80]})"
    return None


def class_dimension(
    prediction: tuple[int, ...] | None, target: tuple[int, ...] | None
) -> int | None:
    """How many classes outputs of shape ``prediction`` score against class-index targets of
    shape ``target``: classes in dimension 1 (``(N, C, ...)`` for ``(N, ...)``) or last
    (``(N, T, C)`` for ``(N, T)``); None when the shapes are not such a pair."""
    if prediction is None or target is None or len(prediction) != len(target) + 1:
        return None
    if prediction[:-1] == target:
        return prediction[-1]
    if (prediction[0], *prediction[2:]) == target:
        return prediction[1]
    return None


def float_classes(
    prediction: tuple[int, ...] | None, batch: Any, data: DataSource, task: str | None
) -> int | None:
    """Float targets of whole numbers, one per sample, against outputs of 2 or more per sample
    (``(N,)`` against ``(N, C)``) are class indices, not regression values (MSE would
    broadcast the pair, with only torch's warning): returns C. None: not such a pair. Raises
    ConfigError naming the pair when the targets are no class indices 0..C-1."""
    target = target_of(batch)
    if data.info.task != "regression" or task == "regression" or target is None:
        return None
    classes = class_dimension(prediction, _shape(target))
    if classes is None or classes < 2 or target.ndim != 1:
        return None
    labels = data.y if isinstance(data, TensorSource) else target
    if not bool((labels == labels.round()).all()) or labels.min() < 0 or labels.max() >= classes:
        raise ConfigError(
            f"the model outputs {classes} values per sample and the targets are one float per "
            f"sample ({data.info.description}) that are not class indices 0..{classes - 1}: "
            "MSE would only broadcast the two. For regression give the model 1 output; for "
            f"classification pass integer labels 0..{classes - 1}"
        )
    return classes


def classes_from_outputs(
    data: DataSource, facts: DryRunFacts | None, notes: list[str]
) -> DataSource:
    """The data as the classification the dry run found its float targets to be (see
    :func:`float_classes`; said in ``notes`` for events.log), else as it is."""
    if facts is None or facts.float_classes is None:
        return data
    classes = facts.float_classes
    notes.append(
        f"float targets of whole numbers with a model of {classes} outputs: trained as "
        f"{classes} classes (cross-entropy), not as regression; pass task='regression' and "
        "a model of 1 output for regression"
    )
    if isinstance(data, TensorSource):
        data = replace(data, y=data.y.long())
    new_info = replace(data.info, task="classification", num_outputs=classes)
    return replace(data, info=new_info) if is_dataclass(data) else data


def _per_sample(x: Any) -> int:
    """Values per channel per sample of a BatchNorm input ``(N, C, *spatial)``."""
    return int(torch.Size(x.shape[2:]).numel()) if isinstance(x, torch.Tensor) else 2


def _predicted(out: Any) -> torch.Tensor | None:
    try:
        return prediction(out)
    except TypeError:
        return None


def _shape(t: Any) -> tuple[int, ...] | None:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else None


def _loss_and_metrics(
    batch: Any,
    objective: Objective,
    metrics: dict[str, Callable[..., Any]],
    device: torch.device,
    out: Any,
    count: torch.Tensor | None,
) -> None:
    """The loss and metrics of the model's outputs ``out`` on ``batch`` (values checked);
    ``count``: the objective's count of the batch's items."""
    num_items = 1.0 if count is not None else None
    loss_sum, got = objective.loss(out, batch, count, num_items)
    if device.type == "meta":
        return  # no values to check
    if got is not None and float(got) < 0:
        raise ValueError(f"loss_fn's count is {float(got):g}: a count of items is never negative")
    meter = Meter(objective.task, metrics, device)
    samples = num_samples(batch)
    items = got if got is not None else count if count is not None else samples
    scored, args = objective.scored(out, batch), objective.metric_args(out, batch)
    meter.batch(loss_sum, items, samples, scored, args)


def _two_samples(data: DataSource) -> Any:
    """The data's first two samples as the workers read them (a Dataset's collated as they
    will be); else zeros shaped like the data's."""
    if isinstance(data, (DatasetSource, StreamSource)):
        return data.example  # validated on it already: no second read
    if isinstance(data, TensorSource):
        return data.x[:2], data.y[:2]
    return example_batch(data.info, 2)


def _describe(batch: Any) -> str:
    if type(batch) is tuple and len(batch) == 2:
        return f"inputs {describe_structure(batch[0])}, targets {describe_structure(batch[1])}"
    return describe_structure(batch)

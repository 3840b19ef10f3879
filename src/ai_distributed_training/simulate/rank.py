"""One simulated rank: the job's own code for a few steps in a process posing as that rank.

What runs is what a worker runs (:mod:`..training`): the data opened and split as the job's
(:func:`~..training.rank.open_data`), the strategy's model (sharded from birth, wrapped), the
optimizer, the loop's global batches and this rank's share of them, the step. The process group
is the fake backend's (or a real one, to compare): collectives return at once, so tensor
values are meaningless and never looked at: the non-finite check is left out, and under fake
tensors (a model too big for this host) every scalar read gives 1. What is measured is what
values do not change: memory by category, the collectives and their bytes, the data share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..host import rss_bytes
from ..planner.counting import data_bytes_per_worker
from ..topology import RankEnv
from ..training.context import RankContext, RankData
from ..training.job import Job
from ..training.loop import Loop, planned_steps, training_samples
from ..training.parts import LoopParts, build_parts
from ..training.rank import autocast_dtype, open_data
from ..training.recompute import checkpoint_blocks
from ..training.resume import LoopPosition
from ..training.strategies import Strategy, local_part, make_strategy, model_state_bytes
from .private import (
    CollectiveCounter,
    MemTracker,
    ScalarReads,
    completed_hook,
    fake_tensors,
    lazy_fsdp_chunks,
    memory_tracker,
    peak_memory,
)


@dataclass
class RankFacts:
    """What one simulated rank measured, for the last step simulated (the first allocates
    the optimizer's state; the last is a step as every later one)."""

    rank: int
    world_size: int
    #: This rank's samples of each global batch simulated, and the global batches' sizes.
    samples: list[int] = field(default_factory=list)
    global_batch: int = 0
    #: Peak bytes by category (``total`` too), from torch's memory tracker.
    memory: dict[str, int] = field(default_factory=dict)
    #: Bytes of this rank's parameter shards that are FSDP's dim-0 padding (its gradients and
    #: optimizer state pad as much again, each).
    padding_bytes: int = 0
    #: Parameters whose shard on this rank is padding only (fewer rows than ranks).
    padding_only_parameters: int = 0
    #: Parameters + gradients + optimizer state this rank holds (as the loop reports it).
    model_state_bytes: int = 0
    #: This rank's parameters (its shards, if sharded): what its optimizer steps.
    local_parameters: int = 0
    #: What this rank's checkpoint save writes (counted, not written).
    checkpoint_bytes: int = 0
    #: The last step's collectives: ``(operator, bytes, group size)`` per call.
    collectives: list[tuple[str, int, int]] = field(default_factory=list)
    fake_tensors: bool = False
    #: A real run's only: the peak resident memory its step added to the process.
    measured_bytes: int | None = None
    #: A real run's only: resident memory setting up the strategy added (its process groups:
    #: runtime, which the simulation leaves to the profile's per-worker baseline).
    set_up_bytes: int = 0
    seconds: float = 0.0
    #: The error the rank's step raised (its traceback's last lines), if any.
    error: str | None = None


def simulate_rank(
    job: Job,
    env: RankEnv,
    *,
    steps: int,
    fake: bool,
    fake_group: bool,
    data: RankData | None = None,
) -> RankFacts:
    """Run ``steps`` steps of ``job`` as rank ``env.rank`` of ``env.world_size`` in this
    process, whose process group is joined already (``fake_group``: on the fake backend);
    ``fake``: under fake tensors; ``data``: the job's data opened already (by an earlier rank
    posed as: the same for every rank). An error of the job's code is returned, not raised."""
    facts = RankFacts(env.rank, env.world_size, fake_tensors=fake)
    started = time.perf_counter()
    try:
        opened = data if data is not None else open_data(job)
        with lazy_fsdp_chunks() if fake_group else contextlib.nullcontext():
            _simulate(job, env, facts, opened, steps=steps, fake=fake, fake_group=fake_group)
    except Exception as err:  # the job's own failure at this world size: reported
        lines = traceback.format_exception(err)
        facts.error = f"{type(err).__name__}: {err}\n" + "".join(lines[-6:])
    facts.seconds = time.perf_counter() - started
    return facts


def _simulate(
    job: Job,
    env: RankEnv,
    facts: RankFacts,
    data: RankData,
    *,
    steps: int,
    fake: bool,
    fake_group: bool,
) -> None:
    before = rss_bytes() or 0
    strategy = _strategy(job, env, fake_group=fake_group)
    if not fake_group:
        facts.set_up_bytes = (rss_bytes() or 0) - before
    ctx = RankContext(loop=job.loop, optim=job.optim, step=job.step, strategy=strategy)
    tensors = fake_tensors() if fake else contextlib.nullcontext()
    with tensors, ScalarReads():
        torch.manual_seed(job.loop.seed)
        model = strategy.build_model(job.model, job.data.info)
        checkpoint_blocks(model, job.parallel.activation_checkpointing or ())
        parts = build_parts(model, data, ctx, planned_steps(job.loop, training_samples(data)))
    models, optimizers = _models_and_optimizers(parts)
    counter = CollectiveCounter()
    if fake_group:
        for wrapped in models:
            if isinstance(wrapped, DistributedDataParallel):
                wrapped.register_comm_hook(None, completed_hook(counter))
    loop = Loop(ctx=ctx, data=data, parts=parts)
    batches = loop.streamed() if loop.feed is not None else loop.indexed(1)
    pos = LoopPosition()
    for step in range(1, steps + 1):
        share, global_count = next(batches, ([], 0))
        if not global_count:
            break
        facts.samples.append(sum(m.samples for m in share))
        facts.global_batch = global_count
        # Only the last step is measured (the first creates the optimizer's state; the last is
        # as every later one): the tracker's and the counter's dispatch slow a step down 2x.
        last = step == steps
        tracker = memory_tracker(models, optimizers) if last else contextlib.nullcontext()
        counter.calls = []
        with tensors, ScalarReads(), tracker, counter if last else contextlib.nullcontext():
            stats = loop.step.forward_backward(share, global_count, step)
            loop.step.apply_gradients(stats, pos, 1)
        if isinstance(tracker, MemTracker):
            facts.memory = _with_buckets(peak_memory(tracker), models)
    if not job.launch.use_gpus:  # a CPU worker holds its data in the same memory
        held = data_bytes_per_worker(job.data)
        facts.memory["data"] = held
        facts.memory["total"] = facts.memory.get("total", 0) + held
    facts.collectives = list(counter.calls)
    _record_state(facts, strategy, models, optimizers, sharded=job.parallel.shards_model)


def _record_state(
    facts: RankFacts,
    strategy: Strategy,
    models: list[nn.Module],
    optimizers: list[torch.optim.Optimizer],
    *,
    sharded: bool,
) -> None:
    """What this rank holds after its steps: model state, parameters, padding, checkpoint."""
    facts.model_state_bytes = sum(
        model_state_bytes(m, o) for m, o in zip(models, optimizers, strict=True)
    )
    facts.local_parameters = sum(local_part(p).numel() for m in models for p in m.parameters())
    facts.padding_bytes = sum(padding_bytes(p) for m in models for p in m.parameters())
    facts.padding_only_parameters = sum(
        1 for m in models for p in m.parameters() if padding_bytes(p) and not local_part(p).numel()
    )
    facts.checkpoint_bytes = checkpoint_bytes(strategy, models, optimizers, sharded=sharded)


def _strategy(job: Job, env: RankEnv, *, fake_group: bool) -> Strategy:
    """The job's strategy for this rank, on this host's CPU. Values are meaningless here
    (collectives return at once): on the fake group the initial weights are not broadcast
    from rank 0 (an object collective no posed rank can receive); the non-finite check runs
    (its collective is the job's) and its answer is ignored; every rank counts its sums."""
    cpu = torch.device("cpu")
    strategy = make_strategy(
        job.parallel,
        env=env,
        device=cpu,
        blocks=list(job.parallel.fsdp_blocks or job.model.blocks()),
        compute_dtype=autocast_dtype(job.parallel.precision, cpu),
    )
    getattr(strategy, "shard_mesh", None)  # FSDP's: made now (not under fake tensors)
    if fake_group:
        if hasattr(strategy, "initial_values"):
            strategy.initial_values = False
        # A tensor-parallel peer adds zeros to the sums its group's first rank counts: the
        # fake all-reduce hands each rank back its own, so each counts its own (same values).
        strategy.data = dataclasses.replace(strategy.data, counts=True)
    check = strategy.gradients_finite
    strategy.gradients_finite = lambda wrapped: check(wrapped) or True  # type: ignore[method-assign]
    return strategy


def _with_buckets(memory: dict[str, int], models: list[nn.Module]) -> dict[str, int]:
    """``memory`` with DDP's gradient buckets, which the tracker cannot see (the reducer
    allocates them in C++ when DDP wraps the model; with ``gradient_as_bucket_view`` the
    gradients are views of them): as big as the trainable parameters, held throughout."""
    buckets = sum(
        p.numel() * p.element_size()
        for m in models
        if isinstance(m, DistributedDataParallel)
        for p in m.parameters()
        if p.requires_grad
    )
    memory = dict(memory)
    memory["gradients"] = memory.get("gradients", 0) + buckets
    memory["total"] = memory.get("total", 0) + buckets
    return memory


def _models_and_optimizers(
    parts: LoopParts,
) -> tuple[list[nn.Module], list[torch.optim.Optimizer]]:
    """The wrapped models and their optimizers, in the same order."""
    step_ctx = getattr(parts.step, "ctx", None)
    assert step_ctx is not None, "the loop's step is a StepRunner"
    names = list(step_ctx.models)
    return [step_ctx.models[n] for n in names], [step_ctx.optimizers[n] for n in names]


def padding_bytes(param: torch.Tensor) -> int:
    """Bytes of ``param``'s local shard that FSDP2 pads: dim 0 is split in chunks of
    ``ceil(rows / n)`` rows over the ``n`` ranks of a one-dimensional mesh, the last ranks'
    chunks partly or wholly padding."""
    mesh = getattr(param, "device_mesh", None)
    placements = getattr(param, "placements", ())
    if mesh is None or mesh.ndim != 1 or not placements or not placements[0].is_shard(0):
        return 0
    rows, n = param.shape[0], mesh.size()
    chunk = -(-rows // n)
    local = local_part(param)
    per_row = local.numel() // max(local.shape[0], 1) if local.shape[0] else param.numel() // rows
    return int((chunk - local.shape[0]) * per_row * param.element_size())


def checkpoint_bytes(
    strategy: Strategy,
    models: list[nn.Module],
    optimizers: list[torch.optim.Optimizer],
    *,
    sharded: bool,
) -> int:
    """Bytes this rank's checkpoint save writes: rank 0 all of a replicated model's state
    (DDP), every rank its own shards of a sharded one (DCP; whole tensors by rank 0)."""
    tensors: list[Any] = [
        *(t for m in models for t in strategy.unwrap(m).state_dict().values()),
        *(v for o in optimizers for state in o.state.values() for v in state.values()),
    ]
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    if not sharded:
        return sum(_bytes(t) for t in tensors) if strategy.rank == 0 else 0
    shards = [t for t in tensors if hasattr(t, "to_local")]
    whole = [t for t in tensors if not hasattr(t, "to_local")]
    mine = sum(_bytes(local_part(t)) for t in shards)
    return mine + (sum(_bytes(t) for t in whole) if strategy.rank == 0 else 0)


def _bytes(t: torch.Tensor) -> int:
    return int(t.numel() * t.element_size())

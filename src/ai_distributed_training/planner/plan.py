"""The planner: predict memory, step time and scaling for N workers, without training.

Everything here is arithmetic on three measured or counted inputs:

* the **model**, counted on the meta device (no memory, no compute): parameters, forward +
  backward FLOPs per sample (``torch.utils.flop_counter``), bytes of activations saved for the
  backward pass per sample;
* the **data partition**, from the same functions the trainer uses (:mod:`.sharding`);
* the **hardware**, a :class:`~.hardware.HardwareProfile` (calibrated here, or a preset).

Formulas (also in the README):

* memory per worker, DDP = baseline + data + (4 + 4 + optimizer) bytes x parameters
  + activations(per-worker batch); AdamW/Adam keep 8 bytes per parameter, SGD with momentum 4.
  FSDP = baseline + data + (8 + optimizer) x parameters / N + 8 x largest block + activations.
* step time = compute + exposed communication; compute = per-worker batch x FLOPs per sample /
  worker rate + optimizer + fixed overhead, slowed by the cores' time-sharing when workers
  outnumber them; communication = ring all-reduce of the gradients per DDP bucket,
  ``2(N-1) x latency + 2(N-1)/N x bytes / bandwidth``, of which all but the last bucket may hide
  under the backward pass.
* scaling efficiency = samples/s(N) / (samples/s(1) x slots used(N) / slots used(1)).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..config.sections import OptimSection, Sections
from ..data import (
    DataInfo,
    DataSource,
    example_batch,
)
from ..errors import ConfigError
from ..models import ModelSource
from ..training.optim import build_optimizer, loss_sum_fn
from ..training.sharding import num_steps, shard_bounds
from ..training.strategies import DDP_BUCKET_MB
from .counting import ModelCount, count_source, data_bytes_per_worker
from .profiles import HardwareProfile
from .timing import median_seconds, torch_threads, train_step

#: DDP's bucket size: the strategy's on gloo, which is also torch's default on NCCL.
BUCKET_BYTES = DDP_BUCKET_MB * 1024 * 1024
#: Bytes of optimizer state per parameter (fp32).
OPTIMIZER_BYTES = {"adamw": 8, "adam": 8, "sgd": 4}
DEFAULT_NODES = tuple(2**i for i in range(11))  # 1, 2, 4, ..., 1024


@dataclass(frozen=True)
class Row:
    """The prediction for one node count (what ``--json`` prints, one object per row)."""

    nodes: int
    hosts: int
    threads_per_worker: int
    per_worker_batch: int  # the largest share of a global batch
    per_worker_samples_per_epoch: int  # the largest share of an epoch
    steps_per_epoch: int
    compute_s: float
    communication_s: float
    step_time_s: float
    samples_per_second: float
    efficiency: float
    memory_per_worker_bytes: int  # of the chosen strategy
    memory_ddp_bytes: int
    memory_fsdp_bytes: int
    strategy: str  # "ddp", "fsdp" or "none fits"
    recommended: bool = False
    #: With tensor parallelism over all the workers ("tp"); None: the model has no plan.
    memory_tp_bytes: int | None = None
    #: The DDP and FSDP memory are a simulation's (the job's real step posed as its ranks,
    #: ``plan(simulate=True)``), not the formulas'.
    simulated: bool = False


@dataclass(frozen=True)
class Plan:
    """A plan: per-node-count rows and the recommendation. ``rows`` are ordered by nodes."""

    model: ModelCount
    hardware: HardwareProfile
    global_batch: int
    train_samples: int
    threshold: float
    rows: list[Row]

    @property
    def recommended(self) -> Row | None:
        return next((r for r in self.rows if r.recommended), None)

    def to_json(self) -> list[dict[str, Any]]:
        """One object per node count."""
        return [asdict(r) for r in self.rows]

    def table(self) -> str:
        """A readable table plus the recommendation and the inputs it rests on."""
        m, hw = self.model, self.hardware
        tp = " TP mem/wkr" if m.tp_dims else ""  # a model with a tensor-parallel plan
        lines = [
            f"hardware: {hw.name}",
            f"model: {m.parameters:,} parameters, {m.flops_per_sample / 1e6:.3g} MFLOP/sample "
            f"(forward + backward), {m.activation_bytes_per_sample / 1e3:.3g} kB activations/"
            f"sample; global batch {self.global_batch}, {self.train_samples:,} training samples",
            f"{'nodes':>6} {'batch/wkr':>9} {'step ms':>9} {'comm ms':>8} {'samples/s':>11} "
            f"{'effic.':>6} {'DDP mem/wkr':>11} {'FSDP mem/wkr':>12}{tp}  strategy",
        ]
        for r in self.rows:
            mark = ("  (simulated)" if r.simulated else "") + (
                "  <- recommended" if r.recommended else ""
            )
            tp_mem = r.memory_tp_bytes
            tp_bytes = f" {human_bytes(tp_mem):>10}" if tp_mem is not None else ""
            lines.append(
                f"{r.nodes:>6} {r.per_worker_batch:>9} {r.step_time_s * 1e3:>9.2f} "
                f"{r.communication_s * 1e3:>8.2f} {r.samples_per_second:>11,.0f} "
                f"{r.efficiency:>6.2f} {human_bytes(r.memory_ddp_bytes):>11} "
                f"{human_bytes(r.memory_fsdp_bytes):>12}{tp_bytes}  {r.strategy}{mark}"
            )
        best = self.recommended
        below = [r.nodes for r in self.rows if r.efficiency < self.threshold]
        lines.append(
            f"recommended: {best.nodes} nodes with {best.strategy} "
            f"({best.samples_per_second:,.0f} samples/s)"
            if best
            else "recommended: none (the model does not fit at any node count shown)"
        )
        if below:
            lines.append(f"efficiency falls under {self.threshold:.2f} from {below[0]} nodes on")
        return "\n".join(lines)

    def plot(self, path: Path) -> Path:
        """A PNG of predicted samples/s and efficiency versus nodes."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        nodes = [r.nodes for r in self.rows]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(nodes, [r.samples_per_second for r in self.rows], "o-", label="samples/s")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("nodes (workers)")
        ax.set_ylabel("predicted samples/s")
        eff = ax.twinx()
        eff.plot(nodes, [r.efficiency for r in self.rows], "s--", color="tab:orange")
        eff.axhline(self.threshold, color="tab:orange", lw=0.8, ls=":")
        eff.set_ylabel("scaling efficiency", color="tab:orange")
        eff.set_ylim(0, 1.05 * max(1.0, *(r.efficiency for r in self.rows)))
        ax.set_title(self.hardware.name.split(":")[0])
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def placement(n: int, hw: HardwareProfile) -> tuple[int, int, int]:
    """(hosts, workers on the busiest host, threads per worker) for ``n`` workers."""
    hosts = hw.hosts or max(1, math.ceil(n / hw.slots_per_host))
    per_host = math.ceil(n / hosts)
    threads = max(1, hw.slots_per_host // per_host) if hw.kind == "cpu" else 1
    return hosts, per_host, threads


def compute_seconds(batch: int, m: ModelCount, hw: HardwareProfile, n: int, threads: int) -> float:
    """One worker's compute for one step of ``batch`` samples, ``n`` workers on the host (the
    cores' time-sharing included; measured slowdowns for ``n`` applied where calibrated)."""
    spread = (threads - 1) / max(1, hw.slots_per_host - 1)
    efficiency = 1 + (hw.threading_efficiency - 1) * spread  # 1 thread: 1; all cores: measured
    rate = hw.slot_flops * threads * efficiency
    work = batch * m.flops_per_sample / rate
    work += m.parameters * hw.optimizer_s_per_parameter / threads + hw.step_overhead_s
    time_sharing = max(1.0, n * threads / hw.slots_per_host)
    return work * time_sharing * hw.compute_slowdown.get(n, 1.0)


def _communication_s(
    n: int, m: ModelCount, hw: HardwareProfile, hosts: int, backward: float
) -> float:
    """Exposed all-reduce time of one step's gradients (fp32), bucket by bucket."""
    if n == 1:
        return 0.0
    link = hw.measured.get(n) or (hw.inter_host if hosts > 1 else hw.intra_host)
    grad_bytes = 4 * m.parameters
    buckets = max(1, math.ceil(grad_bytes / BUCKET_BYTES))
    total = sum(
        link.allreduce_s(min(BUCKET_BYTES, grad_bytes - i * BUCKET_BYTES), n)
        for i in range(buckets)
    )
    # Every bucket but the last can overlap with what is left of the backward pass.
    hidden = min(total * (buckets - 1) / buckets, backward * (buckets - 1) / buckets)
    return total - hidden


def _optimizer_name(optim: OptimSection) -> str:
    """The optimizer whose state the plan counts (a user's factory: counted as AdamW)."""
    return optim.optimizer if isinstance(optim.optimizer, str) else "adamw"


def _bytes_per_parameter(optimizer: str) -> int:
    """Model state per parameter: fp32 weight and gradient (4 + 4) plus the optimizer's state."""
    return 8 + OPTIMIZER_BYTES.get(optimizer, 8)


def _memory(
    n: int, batch: int, m: ModelCount, hw: HardwareProfile, data: int, optimizer: str
) -> tuple[int, int]:
    """(DDP, FSDP) bytes per worker; FSDP's shards with their dim-0 padding (see
    :meth:`~.counting.ModelCount.sharded_parameters`), plus one gathered block."""
    per_parameter = _bytes_per_parameter(optimizer)
    activations = batch * m.activation_bytes_per_sample
    common = hw.worker_baseline_bytes + data + activations
    ddp = common + per_parameter * m.parameters
    fsdp = common + per_parameter * m.sharded_parameters(n) + 8 * m.largest_block_parameters
    return int(ddp), int(fsdp)


def _tp_memory(
    n: int, batch: int, m: ModelCount, hw: HardwareProfile, data: int, optimizer: str
) -> int | None:
    """Bytes per worker with tensor parallelism over all ``n`` workers (``"tp"``): the plan's
    slices and the whole rest; every worker runs the whole global ``batch`` (its activations
    counted whole: an upper bound, the split layers' are 1/n). None without a plan."""
    held = m.tensor_parallel_parameters(n)
    if held is None:
        return None
    activations = batch * m.activation_bytes_per_sample
    state = _bytes_per_parameter(optimizer) * held
    return int(hw.worker_baseline_bytes + data + activations + state)


def make_plan(
    model: ModelSource,
    data: DataSource,
    sections: Sections,
    hardware: HardwareProfile,
    nodes: tuple[int, ...] = DEFAULT_NODES,
    threshold: float = 0.8,
) -> Plan:
    """Predict every node count in ``nodes`` for this model, data, settings and hardware."""
    info, loop = data.info, sections.loop
    check_plannable(info, "the planner", model)
    count = count_source(model, info, sections.parallel.tp_plan)
    timed = _time_model_here(model, info, sections, count, hardware)
    # This model's own speed on this machine beats the probe's; it rates this plan's compute
    # only: the profile itself (what --save-hardware writes) stays model-independent.
    rated = hardware if timed is None else hardware.model_copy(update={"slot_flops": timed})
    n_train, batch = _training_samples(info, sections), loop.batch_size
    # GPU memory holds no dataset (batches are copied over from host memory).
    data_bytes = data_bytes_per_worker(data) if hardware.kind == "cpu" else 0
    optimizer = _optimizer_name(sections.optim)
    rows: list[Row] = []
    for n in sorted(set(nodes)):
        hosts, per_host, threads = placement(n, hardware)
        share = _largest_share(batch, n)
        compute = compute_seconds(share, count, rated, per_host, threads)
        backward = compute * 2 / 3  # backward is ~2/3 of forward + backward for dense layers
        comm = _communication_s(n, count, hardware, hosts, backward)
        step = compute + comm
        ddp, fsdp = _memory(n, share, count, hardware, data_bytes, optimizer)
        limit = hardware.memory_bytes / (per_host if hardware.kind == "cpu" else 1)
        strategy = "ddp" if ddp <= limit else "fsdp" if fsdp <= limit else "none fits"
        rows.append(
            Row(
                nodes=n,
                hosts=hosts,
                threads_per_worker=threads,
                per_worker_batch=share,
                per_worker_samples_per_epoch=_epoch_share(n_train, batch, n),
                steps_per_epoch=num_steps(n_train, batch, loop.drop_last),
                compute_s=compute,
                communication_s=comm,
                step_time_s=step,
                samples_per_second=batch / step,
                efficiency=0.0,  # filled in below, relative to the first row
                memory_per_worker_bytes=fsdp if strategy == "fsdp" else ddp,
                memory_ddp_bytes=ddp,
                memory_fsdp_bytes=fsdp,
                strategy=strategy,
                memory_tp_bytes=_tp_memory(n, batch, count, hardware, data_bytes, optimizer),
            )
        )
    rows = _with_efficiency(rows, hardware, threshold)
    return Plan(count, hardware, batch, n_train, threshold, rows)


def _training_samples(info: DataInfo, sections: Sections) -> int:
    """Training samples per epoch (a stream of unknown length: those of ``max_steps``)."""
    loop = sections.loop
    held_out = 0.0 if sections.data.validation_data is not None else loop.validation_split
    if not (info.stream and not info.samples):
        return info.samples - int(info.samples * held_out)
    if loop.max_steps is None:
        raise ConfigError(
            "the planner predicts the time of the steps in all; a stream without len() "
            "does not say how many: pass max_steps"
        )
    return loop.max_steps * loop.batch_size


#: Models up to this many bytes of training state are timed for real by plans on this machine.
TIME_MODEL_LIMIT_BYTES = 1 << 30


def _time_model_here(
    model: ModelSource,
    info: DataInfo,
    sections: Sections,
    count: ModelCount,
    hw: HardwareProfile,
) -> float | None:
    """The model's achieved FLOP/s on one core of this machine, from a few real training
    steps with one thread (the probe MLP's rate misjudges other layer shapes by 10-30%).
    None where the plan is not for this machine, the model is too big to build here, or it
    cannot run on zero inputs of the data's shape (then the probe's rate is used)."""
    if hw.kind != "cpu" or hw.hosts != 1 or 16 * count.parameters > TIME_MODEL_LIMIT_BYTES:
        return None
    try:
        with torch_threads(1):
            net = copy.deepcopy(model.module) if model.module is not None else model.build(info)
            optimizer = build_optimizer(sections.optim, net)
            loss_sum = loss_sum_fn(info.task, sections.step.loss_fn)
            batch = max(1, min(256, sections.loop.batch_size))
            x, y = example_batch(info, batch)
            if not info.tokens:
                x = torch.randn_like(x)
            seconds = median_seconds(train_step(net, optimizer, loss_sum, x, y), 7, warmup=3)
    except Exception:  # any model that cannot run this way: keep the probe's rate
        return None
    fixed = count.parameters * hw.optimizer_s_per_parameter + hw.step_overhead_s
    busy = seconds - fixed
    return batch * count.flops_per_sample / busy if busy > 0 else None


def _largest_share(batch: int, n: int) -> int:
    start, stop = shard_bounds(batch, 0, n)  # rank 0's share is the largest
    return stop - start


def _epoch_share(n_train: int, batch: int, n: int) -> int:
    """Samples rank 0 (the busiest) trains on per epoch: full batches plus the last one."""
    full, last = divmod(n_train, batch)
    return full * _largest_share(batch, n) + (_largest_share(last, n) if last else 0)


def _slots_used(row: Row, hw: HardwareProfile) -> int:
    return min(row.nodes * row.threads_per_worker, row.hosts * hw.slots_per_host)


def _with_efficiency(rows: list[Row], hw: HardwareProfile, threshold: float) -> list[Row]:
    """Fill in efficiencies (against the first row) and mark the recommendation: the fastest
    node count that fits and keeps efficiency at or above ``threshold`` (fewest nodes on ties)."""
    base = rows[0]
    per_slot = base.samples_per_second / _slots_used(base, hw)
    out = []
    for r in rows:
        eff = r.samples_per_second / (per_slot * _slots_used(r, hw))
        out.append(Row(**{**asdict(r), "efficiency": eff}))
    good = [r for r in out if r.strategy != "none fits" and r.efficiency >= threshold]
    if good:
        best = max(good, key=lambda r: (round(r.samples_per_second, 6), -r.nodes))
        out = [Row(**{**asdict(r), "recommended": r is best}) for r in out]
    return out


def with_simulated_memory(
    plan: Plan, ddp: Mapping[int, int], fsdp: Mapping[int, int], threshold: float
) -> Plan:
    """``plan`` with the peak memory per worker a simulation measured (by node count, the
    worker's runtime included) in place of the formulas' where it has one: the strategy
    that fits and the recommendation follow."""
    hw, rows = plan.hardware, []
    for r in plan.rows:
        if r.nodes not in ddp and r.nodes not in fsdp:
            rows.append(replace(r, recommended=False))
            continue
        mem_ddp, mem_fsdp = (
            ddp.get(r.nodes, r.memory_ddp_bytes),
            fsdp.get(r.nodes, r.memory_fsdp_bytes),
        )
        limit = hw.memory_bytes / (placement(r.nodes, hw)[1] if hw.kind == "cpu" else 1)
        strategy = "ddp" if mem_ddp <= limit else "fsdp" if mem_fsdp <= limit else "none fits"
        rows.append(
            replace(
                r,
                memory_ddp_bytes=mem_ddp,
                memory_fsdp_bytes=mem_fsdp,
                memory_per_worker_bytes=mem_fsdp if strategy == "fsdp" else mem_ddp,
                strategy=strategy,
                simulated=True,
                recommended=False,
            )
        )
    return replace(plan, rows=_with_efficiency(rows, hw, threshold))


def replica_bytes(model: ModelSource, info: DataInfo, sections: Sections) -> int:
    """One DDP worker's model state and activations: parameters + gradients (4 + 4 bytes each,
    fp32), optimizer state, and the activations of its share of a global batch."""
    count = count_source(model, info)
    state = _bytes_per_parameter(_optimizer_name(sections.optim)) * count.parameters
    share = -(-sections.loop.batch_size // sections.launch.nodes)
    return int(state + share * count.activation_bytes_per_sample)


def choose_strategy(
    model: ModelSource, info: DataInfo, sections: Sections, budget_bytes: int
) -> str:
    """``strategy="auto"``: ``"fsdp"`` when a full replica would take more than 80% of a
    worker's memory budget (its GPU, or its share of the host's memory), else ``"ddp"``."""
    check_plannable(info, "strategy='auto'", model)
    return "fsdp" if replica_bytes(model, info, sections) > 0.8 * budget_bytes else "ddp"


def check_plannable(info: DataInfo, what: str, model: ModelSource) -> None:
    """The planner runs one model on zero batches shaped like ``(inputs, targets)`` data;
    other structures, and several models, are a ConfigError naming ``what`` needed it."""
    if model.parts is not None:
        raise ConfigError(
            f"{what} sizes one model; this job trains several ({model.name}): choose "
            "strategy='ddp' or 'fsdp'"
        )
    if info.structured:
        raise ConfigError(
            f"{what} needs (inputs, targets) tensor data to size the model; this data's "
            f"batches are structured ({info.description}): choose strategy='ddp' or 'fsdp'"
        )


def node_counts(nodes: int | Sequence[int] | None) -> tuple[int, ...]:
    """The node counts a plan covers: 1, 2, 4, ..., 1024 (plus ``nodes`` if an int; exactly
    ``nodes`` if a list, with 1 added as the baseline).

    Raises:
        ConfigError: a count that is not a positive integer.
    """
    counts: tuple[Any, ...]
    if nodes is None:
        counts = DEFAULT_NODES
    elif isinstance(nodes, int):
        counts = (*DEFAULT_NODES, nodes)
    elif isinstance(nodes, Sequence) and not isinstance(nodes, str):
        counts = (1, *nodes)
    else:
        counts = (nodes,)
    bad = [n for n in counts if isinstance(n, bool) or not isinstance(n, int) or n < 1]
    if bad:
        raise ConfigError(f"nodes={nodes!r}: node counts must be positive integers")
    return counts

"""Hardware profiles for the planner: what one worker computes, how fast workers talk.

A profile is measured on this machine by :func:`calibrate` (a short probe: training steps of a
small MLP at 1 and all threads, and all-reduces timed between real gloo processes) and saved as
YAML, or taken from a preset describing a common cluster. Profiles are plain files: write a
preset out with :func:`save_profile`, edit it, load it back by its path.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
import yaml
from pydantic import Field
from torch import nn

from .config import _Strict, validate
from .errors import ConfigError
from .rundir import cache_root

if TYPE_CHECKING:
    from .plan import ModelCount


class Link(_Strict):
    """A ring all-reduce's cost: ``2(N-1) x latency_s + 2(N-1)/N x bytes / bandwidth``."""

    latency_s: float = Field(ge=0)
    bandwidth_bytes_per_s: float = Field(gt=0)

    def allreduce_s(self, nbytes: float, n: int) -> float:
        """Seconds for ``n`` ranks to all-reduce ``nbytes`` (0 for one rank)."""
        if n <= 1:
            return 0.0
        return 2 * (n - 1) * self.latency_s + 2 * (n - 1) / n * nbytes / self.bandwidth_bytes_per_s


class HardwareProfile(_Strict):
    """What the planner knows about the hardware. ``slots`` are what workers run on side by side
    without sharing: GPUs of a host, or CPU cores (a CPU worker with k threads uses k slots)."""

    name: str
    kind: Literal["cpu", "gpu"]
    slots_per_host: int = Field(gt=0)
    #: None: as many hosts as the node count needs (a cluster); 1: every worker on this host.
    hosts: int | None = Field(default=None, gt=0)
    #: Achieved training FLOP/s of one slot (forward + backward of dense layers, fp32 on CPU).
    slot_flops: float = Field(gt=0)
    #: CPU: achieved rate of one worker on all slots / (slots x slot_flops); 1.0 on GPUs.
    threading_efficiency: float = Field(default=1.0, gt=0, le=1.5)
    #: Fixed time of one optimizer step's bookkeeping (Python, kernel launches, the loop's own).
    step_overhead_s: float = Field(ge=0)
    #: Fused optimizer step time per parameter on one slot.
    optimizer_s_per_parameter: float = Field(ge=0)
    #: Memory of a worker process before model and data (runtime, libraries, CUDA context).
    worker_baseline_bytes: int = Field(ge=0)
    #: Memory available to one worker: a GPU's memory, or the host's memory for CPU workers
    #: (shared by the workers of the host).
    memory_bytes: int = Field(gt=0)
    intra_host: Link
    inter_host: Link
    #: All-reduce fits measured at given rank counts on this host (CPU calibration); they win
    #: over the formula for those counts, including oversubscribed ones.
    measured: dict[int, Link] = Field(default_factory=dict)
    #: Measured compute time of a DDP worker / the model's prediction, by rank count on this
    #: host (time-sharing and context switches when workers outnumber cores).
    compute_slowdown: dict[int, float] = Field(default_factory=dict)


_GB = 1e9
PRESETS: dict[str, HardwareProfile] = {
    "h100-nvlink-400g": HardwareProfile(
        name="h100-nvlink-400g: 8 x H100 80GB per host, NVLink within, 400 Gb/s per GPU between",
        kind="gpu",
        slots_per_host=8,
        slot_flops=0.4 * 989e12,  # bf16 dense peak at 40% model FLOP utilisation
        step_overhead_s=2e-3,
        optimizer_s_per_parameter=16 / 2.0e12,  # 16 bytes moved per parameter at ~2 TB/s
        worker_baseline_bytes=int(1.5 * _GB),  # CUDA context and libraries
        memory_bytes=int(80 * _GB),
        intra_host=Link(latency_s=10e-6, bandwidth_bytes_per_s=360 * _GB),
        inter_host=Link(latency_s=25e-6, bandwidth_bytes_per_s=45 * _GB),
    ),
    "a100-ib-200g": HardwareProfile(
        name="a100-ib-200g: 8 x A100 80GB per host, NVLink within, 200 Gb/s per GPU between",
        kind="gpu",
        slots_per_host=8,
        slot_flops=0.4 * 312e12,
        step_overhead_s=2e-3,
        optimizer_s_per_parameter=16 / 1.5e12,
        worker_baseline_bytes=int(1.5 * _GB),
        memory_bytes=int(80 * _GB),
        intra_host=Link(latency_s=10e-6, bandwidth_bytes_per_s=230 * _GB),
        inter_host=Link(latency_s=30e-6, bandwidth_bytes_per_s=22 * _GB),
    ),
    "cpu-cluster-25g": HardwareProfile(
        name="cpu-cluster-25g: 32-core CPU hosts, 25 Gb/s Ethernet between",
        kind="cpu",
        slots_per_host=32,
        slot_flops=50e9,
        threading_efficiency=0.8,
        step_overhead_s=1e-3,
        optimizer_s_per_parameter=1e-9,
        worker_baseline_bytes=int(0.4 * _GB),
        memory_bytes=int(256 * _GB),
        intra_host=Link(latency_s=50e-6, bandwidth_bytes_per_s=5 * _GB),
        inter_host=Link(latency_s=100e-6, bandwidth_bytes_per_s=2.5 * _GB),
    ),
}
THIS_MACHINE = "this-machine"


def default_profile_path() -> Path:
    """Where this machine's calibration is kept: in :func:`rundir.cache_root`."""
    return cache_root() / f"hardware-{socket.gethostname()}.yaml"


def save_profile(profile: HardwareProfile, path: Path) -> Path:
    """Write ``profile`` as YAML (atomically) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(profile.model_dump(), sort_keys=False))
    os.replace(tmp, path)
    return path


def load_profile(path: Path) -> HardwareProfile:
    """Read a profile file, naming the file and the bad key on error."""
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"hardware profile {str(path)!r} cannot be read: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"hardware profile {str(path)!r} is not a mapping of fields")
    return validate(HardwareProfile, values, f"hardware profile field (in {path})")


def resolve_profile(
    hardware: str | Path | HardwareProfile | None, recalibrate: bool
) -> HardwareProfile:
    """A profile from a preset name, a file path, an object, or ``None``/"this-machine":
    this machine's saved calibration (calibrating first when there is none, or when asked)."""
    if isinstance(hardware, HardwareProfile):
        return hardware
    if hardware is None or str(hardware) == THIS_MACHINE:
        path = default_profile_path()
        if recalibrate or not path.is_file():
            save_profile(calibrate(), path)
        return load_profile(path)
    if str(hardware) in PRESETS:
        return PRESETS[str(hardware)]
    if Path(hardware).is_file():
        return load_profile(Path(hardware))
    raise ConfigError(
        f"hardware={str(hardware)!r} is neither a preset nor a profile file; use "
        f"{THIS_MACHINE!r} (calibrated here), one of {sorted(PRESETS)}, or a YAML file "
        "written by --save-hardware"
    )


# --- calibration ---------------------------------------------------------------------------

#: The compute probe: a small MLP like the reference workload, trained for a few steps.
PROBE_WIDTH, PROBE_BATCH, _PROBE_STEPS = 512, 256, 30


def count_probe() -> ModelCount:
    """The compute probe's MLP counted by the planner's own counter, so probe and plan agree."""
    from .plan import count_model

    with torch.device("meta"):
        net = probe_net()
    return count_model(net, (PROBE_WIDTH,), "classification")


def probe_net() -> nn.Module:
    w = PROBE_WIDTH
    return nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 2))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the body with ``threads`` intra-op threads, restoring the caller's count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def median_seconds(fn: Callable[[], object], runs: int, warmup: int = 0) -> float:
    """Median wall seconds of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> Callable[[], None]:
    """One plain training step on a fixed batch, as a function to time."""

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_sum(net(x), y).backward()
        optimizer.step()

    return step


def probe_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The probe's loss: the trainer's per-sample sum for classification."""
    return F.cross_entropy(out, y, reduction="sum")


def _time_steps(threads: int, batch: int) -> float:
    """Median seconds of one training step of the probe MLP with ``threads`` threads."""
    with torch_threads(threads):
        net = probe_net()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
        x, y = torch.randn(batch, PROBE_WIDTH), torch.zeros(batch, dtype=torch.long)
        return median_seconds(train_step(net, opt, probe_loss, x, y), _PROBE_STEPS - 5, 5)


def _time_optimizer(parameters: int) -> float:
    """Seconds per parameter of a fused AdamW step, one thread."""
    with torch_threads(1):
        p = nn.Parameter(torch.zeros(parameters))
        p.grad = torch.ones(parameters)
        opt = torch.optim.AdamW([p], lr=1e-3, fused=True)
        return median_seconds(opt.step, runs=10, warmup=3) / parameters


def host_memory_bytes() -> int:
    """This host's physical memory."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def calibrate(ranks: tuple[int, ...] | None = None) -> HardwareProfile:
    """Measure this machine: compute speed in-process, all-reduce latency and bandwidth with
    real gloo processes at each rank count of ``ranks`` (default: 2 and twice the cores, capped
    at 8), and a worker's baseline memory. Takes ~15-30 s."""
    from .api import available_cores
    from .launch import launch_local
    from .plan import compute_seconds

    cores = available_cores()
    flops = count_probe().flops_per_sample
    per_parameter = _time_optimizer(1_000_000)
    one = _time_steps(1, PROBE_BATCH)
    tiny = _time_steps(1, 1)  # a 1-sample step: bookkeeping plus the optimizer step
    overhead = max(0.0, tiny - per_parameter * sum(p.numel() for p in probe_net().parameters()))
    slot_flops = PROBE_BATCH * flops / max(one - tiny, 1e-9)
    if cores > 1:
        many = _time_steps(cores, PROBE_BATCH * cores)
        threading = (PROBE_BATCH * cores * flops / max(many - tiny, 1e-9)) / (cores * slot_flops)
    else:
        threading = 1.0
    measured: dict[int, Link] = {}
    slowdown: dict[int, float] = {}
    baseline = 0
    profile = HardwareProfile(  # compute only so far: what the in-training probe is held to
        name=f"{THIS_MACHINE}: {socket.gethostname()}, {cores} cores, calibrated "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        kind="cpu",
        slots_per_host=cores,
        hosts=1,
        slot_flops=slot_flops,
        threading_efficiency=min(1.5, threading),
        step_overhead_s=overhead,
        optimizer_s_per_parameter=per_parameter,
        worker_baseline_bytes=0,
        memory_bytes=host_memory_bytes(),
        intra_host=Link(latency_s=0, bandwidth_bytes_per_s=1),
        inter_host=Link(latency_s=0, bandwidth_bytes_per_s=1),
    )
    probe = count_probe()
    for n in ranks or sorted({2, min(8, 2 * cores)}):
        threads = max(1, cores // n)
        with tempfile.TemporaryDirectory(prefix="adt-calibrate-") as tmp:
            out = Path(tmp) / "allreduce.json"
            args = ["ai_distributed_training.calibrate", str(out), str(threads)]
            launch_local(args, n, Path(tmp) / "logs")
            found = json.loads(out.read_text())
        link = Link(**found["link"])
        # Scale the idle fit so it gives the sync time measured inside DDP training.
        idle = link.allreduce_s(4 * probe.parameters, n)
        factor = max(1.0, found["training_sync_s"] / idle) if idle > 0 else 1.0
        measured[n] = Link(
            latency_s=link.latency_s * factor,
            bandwidth_bytes_per_s=link.bandwidth_bytes_per_s / factor,
        )
        expected = compute_seconds(PROBE_BATCH, probe, profile, n, threads)
        slowdown[n] = max(1.0, found["training_compute_s"] / expected)
        baseline = max(baseline, int(found["baseline_bytes"]))
    within = measured[min(measured)]
    return profile.model_copy(
        update={
            "worker_baseline_bytes": baseline,
            "intra_host": within,
            "inter_host": within,  # one host: nothing crosses a network
            "measured": measured,
            "compute_slowdown": slowdown,
        }
    )


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if os.uname().sysname == "Darwin" else peak * 1024)

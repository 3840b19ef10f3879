"""Calibrating this machine for the planner: compute speed measured in-process, all-reduce
latency and bandwidth between real gloo processes (:mod:`.calibration_worker`, launched through
:mod:`..launch`), and a worker's baseline memory; and the one place that turns a ``hardware``
argument (a preset, a file, ``"this-machine"``) into a profile, calibrating when needed."""

from __future__ import annotations

import json
import socket
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..host import available_cores, host_memory_bytes
from ..launch.elastic import launch_local
from .counting import ModelCount, count_model
from .plan import compute_seconds
from .profiles import (
    PRESETS,
    THIS_MACHINE,
    HardwareProfile,
    Link,
    default_profile_path,
    load_profile,
    save_profile,
)
from .timing import (
    PROBE_BATCH,
    PROBE_STEPS,
    PROBE_WIDTH,
    median_seconds,
    probe_loss,
    probe_net,
    torch_threads,
    train_step,
)


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


def count_probe() -> ModelCount:
    """The compute probe's MLP counted by the planner's own counter, so probe and plan agree."""
    with torch.device("meta"):
        net = probe_net()
    return count_model(net, (PROBE_WIDTH,), "classification")


def _time_steps(threads: int, batch: int) -> float:
    """Median seconds of one training step of the probe MLP with ``threads`` threads."""
    with torch_threads(threads):
        net = probe_net()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
        x, y = torch.randn(batch, PROBE_WIDTH), torch.zeros(batch, dtype=torch.long)
        return median_seconds(train_step(net, opt, probe_loss, x, y), PROBE_STEPS - 5, 5)


def _time_optimizer(parameters: int) -> float:
    """Seconds per parameter of a fused AdamW step, one thread."""
    with torch_threads(1):
        p = nn.Parameter(torch.zeros(parameters))
        p.grad = torch.ones(parameters)
        opt = torch.optim.AdamW([p], lr=1e-3, fused=True)
        return median_seconds(opt.step, runs=10, warmup=3) / parameters


def _compute_profile(cores: int) -> HardwareProfile:
    """This machine's compute, measured in-process (its links are filled in by calibrate)."""
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
    return HardwareProfile(
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


def _measure_ranks(n: int, threads: int, profile: HardwareProfile) -> tuple[Link, float, int]:
    """All-reduce link, compute slowdown and a worker's baseline bytes, from ``n`` real gloo
    processes of ``threads`` threads each."""
    # Imported here: each calibration process runs it as __main__ (see run._launch).
    from . import calibration_worker

    probe = count_probe()
    with tempfile.TemporaryDirectory(prefix="adt-calibrate-") as tmp:
        out = Path(tmp) / "allreduce.json"
        launch_local([calibration_worker.__name__, str(out), str(threads)], n, Path(tmp) / "logs")
        found = json.loads(out.read_text())
    link = Link(**found["link"])
    # Scale the idle fit so it gives the sync time measured inside DDP training.
    idle = link.allreduce_s(4 * probe.parameters, n)
    factor = max(1.0, found["training_sync_s"] / idle) if idle > 0 else 1.0
    scaled = Link(
        latency_s=link.latency_s * factor, bandwidth_bytes_per_s=link.bandwidth_bytes_per_s / factor
    )
    expected = compute_seconds(PROBE_BATCH, probe, profile, n, threads)
    return scaled, max(1.0, found["training_compute_s"] / expected), int(found["baseline_bytes"])


def calibrate(ranks: tuple[int, ...] | None = None) -> HardwareProfile:
    """Measure this machine: compute speed in-process, all-reduce latency and bandwidth with
    real gloo processes at each rank count of ``ranks`` (default: 2 and twice the cores, capped
    at 8), and a worker's baseline memory. Takes ~15-30 s."""
    cores = available_cores()
    profile = _compute_profile(cores)  # what the in-training probe is held to
    measured: dict[int, Link] = {}
    slowdown: dict[int, float] = {}
    baseline = 0
    for n in ranks or sorted({2, min(8, 2 * cores)}):
        measured[n], slowdown[n], used = _measure_ranks(n, max(1, cores // n), profile)
        baseline = max(baseline, used)
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

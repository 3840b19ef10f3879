"""Hardware profiles for the planner: what one worker computes, how fast workers talk.

A profile is measured on this machine by :func:`calibrate` (a short probe: training steps of a
small MLP at 1 and all threads, and all-reduces timed between real gloo processes) and saved as
YAML, or taken from a preset describing a common cluster. Profiles are plain files: write a
preset out with :func:`save_profile`, edit it, load it back by its path.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from ..config import StrictModel, validate
from ..errors import ConfigError
from ..host import cache_root


class Link(StrictModel):
    """A ring all-reduce's cost: ``2(N-1) x latency_s + 2(N-1)/N x bytes / bandwidth``."""

    latency_s: float = Field(ge=0)
    bandwidth_bytes_per_s: float = Field(gt=0)

    def allreduce_s(self, nbytes: float, n: int) -> float:
        """Seconds for ``n`` ranks to all-reduce ``nbytes`` (0 for one rank)."""
        if n <= 1:
            return 0.0
        return 2 * (n - 1) * self.latency_s + 2 * (n - 1) / n * nbytes / self.bandwidth_bytes_per_s


class HardwareProfile(StrictModel):
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

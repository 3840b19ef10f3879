"""A simulated rank's step time on the target hardware, from what it measured: its samples,
its parameters, its collectives and their bytes; the compute and link figures are the
planner's (:mod:`..planner.profiles`: a preset, a file, or this machine's calibration)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..planner.counting import ModelCount
from ..planner.plan import compute_seconds, placement
from ..planner.profiles import HardwareProfile, Link
from .rank import RankFacts

#: What the prediction assumes, printed with every simulation's table.
ASSUMPTIONS = (
    "compute: this rank's samples x the model's FLOPs per sample (forward + backward, counted "
    "on the meta device) at the profile's achieved FLOP/s, plus the optimizer over this "
    "rank's parameters and the profile's fixed step overhead; a tensor-parallel rank does "
    "1/tp_size of its group's FLOPs",
    "communication: ring algorithms on the measured messages: an all-reduce moves 2(n-1)/n of "
    "its bytes, an all-gather or reduce-scatter (n-1)/n, each with n-1 latencies (2(n-1) for "
    "an all-reduce); a group of more workers than a host holds uses the link between hosts",
    "step: compute + communication (nothing hidden: an upper bound); 'overlapped' hides "
    "communication behind compute entirely (a lower bound)",
)


@dataclass(frozen=True)
class StepTime:
    """One rank's predicted step on the target hardware."""

    compute_s: float
    communication_s: float

    @property
    def step_s(self) -> float:
        return self.compute_s + self.communication_s

    @property
    def overlapped_s(self) -> float:
        return max(self.compute_s, self.communication_s)


def predict(facts: RankFacts, count: ModelCount, hw: HardwareProfile, tp_size: int) -> StepTime:
    """``facts``' last step on ``hw`` (see :data:`ASSUMPTIONS`)."""
    _, per_host, threads = placement(facts.world_size, hw)
    samples = facts.samples[-1] if facts.samples else 0
    local = dataclasses.replace(count, parameters=facts.local_parameters)
    compute = compute_seconds(samples, local, hw, per_host, threads)
    if tp_size > 1:
        compute /= tp_size
    communication = sum(
        collective_s(name, nbytes, group, _link(group, hw))
        for name, nbytes, group in facts.collectives
    )
    return StepTime(compute, communication)


def _link(group_size: int, hw: HardwareProfile) -> Link:
    """The link a group's collective runs over: within a host if the group fits on one."""
    return hw.intra_host if group_size <= hw.slots_per_host else hw.inter_host


def collective_s(name: str, nbytes: int, n: int, link: Link) -> float:
    """Seconds of one ring collective of ``nbytes`` among ``n`` ranks."""
    if n <= 1:
        return 0.0
    if name == "all_reduce":
        return link.allreduce_s(nbytes, n)
    if name in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) * link.latency_s + (n - 1) / n * nbytes / link.bandwidth_bytes_per_s
    if name == "broadcast":
        return (n - 1) * link.latency_s + nbytes / link.bandwidth_bytes_per_s
    return (n - 1) * link.latency_s  # a barrier, a send of nothing

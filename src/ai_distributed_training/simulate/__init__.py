"""Simulate a cluster of any size on this machine: the job's real step, one rank at a time.

For each world size asked for, the job is resolved for that many workers on the target
hardware (:func:`..prepare.prepare` with ``cluster=``), and processes (:mod:`.worker`, one per
core) pose as the chosen ranks in turn on torch's fake process-group backend (:mod:`.private`),
each running the job's own code for a few steps (:mod:`.rank`): data share, strategy, model,
optimizer, step. The
measurements (memory by category, collectives and their bytes, checkpoint bytes) then give a
predicted step time on the hardware (:mod:`.predict`) and the problems the job would meet at
that size, per rank (:mod:`.report`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cloudpickle

from ..config import TrainingSettings
from ..errors import ConfigError, SimulationError
from ..planner.counting import ModelCount, count_source
from ..planner.plan import human_bytes, placement
from ..planner.profiles import HardwareProfile
from ..prepare import prepare
from ..training.job import Job
from ..training.sharding import shard_bounds
from .predict import predict
from .rank import RankFacts
from .report import SimulatedRank, Simulation
from .worker import Request, write_request

__all__ = ["RankFacts", "SimulatedRank", "Simulation", "measure", "simulate"]

#: Models whose fp32 weights are larger than this are simulated under fake tensors.
FAKE_ABOVE_BYTES = 1 << 30


def simulate(
    model: Any,
    data: Any,
    settings: TrainingSettings,
    *,
    nodes: Sequence[int],
    hardware: HardwareProfile,
    ranks: Sequence[int] | None = None,
    steps: int = 2,
    fake_tensors: bool | None = None,
) -> Simulation:
    """Simulate ``ranks`` (default: first, last, smallest and largest data share) of each
    world size in ``nodes`` for ``steps`` steps; ``fake_tensors``: None decides by the
    model's size (above :data:`FAKE_ABOVE_BYTES` of weights). A world size the job's checks
    refuse is reported as refused; the others are simulated.

    Raises:
        ConfigError: bad nodes, ranks or steps; every world size refused.
        SimulationError: the simulation's own process failed.
    """
    if not nodes or any(not isinstance(n, int) or n < 1 for n in nodes):
        raise ConfigError(f"nodes={list(nodes)!r}: give positive worker counts")
    if steps < 1:
        raise ConfigError(f"steps={steps!r}: simulate at least 1 step")
    jobs, refused = [], {}
    for world in sorted(set(nodes)):
        try:
            job = _job(model, data, settings, world, hardware)
        except ConfigError as err:  # this size only (e.g. heads a tensor-parallel group splits)
            refused[world] = str(err)
            continue
        jobs.append((job, world, _ranks(job, world, ranks)))
    if not jobs:
        raise ConfigError("; ".join(f"nodes={w}: {e}" for w, e in refused.items()))
    first = jobs[0][0]
    count = count_source(first.model, first.data.info, first.parallel.tp_plan)
    fake = fake_tensors if fake_tensors is not None else 4 * count.parameters > FAKE_ABOVE_BYTES
    facts = _run(jobs, steps, fake)
    tp = {world: _tp_size(job, world) for job, world, _ in jobs}
    return Simulation(
        strategy=str(first.parallel.strategy),
        model=count,
        hardware=hardware,
        global_batch=first.loop.batch_size,
        ranks=[_assess(f, count, hardware, tp[f.world_size]) for f in facts],
        refused=refused,
    )


def _job(
    model: Any, data: Any, settings: TrainingSettings, world: int, hardware: HardwareProfile | None
) -> Job:
    """The job resolved for ``world`` workers: on ``hardware`` (a simulation), or on this host
    (None: a real run to compare with)."""
    # Nothing is validated: no held-out split to read (the global batch is the same).
    sized = settings.model_copy(update={"nodes": world, "validation_split": 0.0})
    return Job.of(prepare(model, data, sized, cluster=hardware), run_id="simulation")


def measure(
    model: Any, data: Any, settings: TrainingSettings, *, nodes: int, steps: int = 2
) -> list[RankFacts]:
    """Run the same steps for real on this host, ``nodes`` gloo processes, with the same
    counters: what the simulation is checked against (``measured_bytes``: each process's
    peak resident memory added by the step)."""
    job = _job(model, data, settings, nodes, None)
    with tempfile.TemporaryDirectory(prefix="adt-measure-") as tmp:
        request = Path(tmp) / "request.pkl"
        write_request(_request([(job, nodes, list(range(nodes)))], steps, False), request)
        port = _free_port()
        outs = [Path(tmp) / f"facts-{r}.pkl" for r in range(nodes)]
        procs = [
            subprocess.Popen(
                [*_worker_command(request, out), str(r), str(nodes), str(port)],
                stderr=subprocess.PIPE,
                text=True,
            )
            for r, out in enumerate(outs)
        ]
        errors = [p.communicate()[1] for p in procs]
        if any(p.returncode for p in procs):
            failed = next(i for i, p in enumerate(procs) if p.returncode)
            raise SimulationError(f"the real run's rank {failed} failed:\n{errors[failed][-4000:]}")
        return [_load(out) for out in outs]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tp_size(job: Job, world: int) -> int:
    parallel = job.parallel
    return (parallel.tp_size or world) if parallel.tensor_parallel else 1


def _ranks(job: Job, world: int, asked: Sequence[int] | None) -> list[int]:
    """The ranks to simulate: those asked for (checked), or the first, the last, and those
    with the smallest and the largest share of a global batch."""
    if asked is not None:
        bad = [r for r in asked if not 0 <= r < world]
        if bad or not asked:
            raise ConfigError(
                f"ranks={list(asked)!r}: a world of {world} workers has ranks 0..{world - 1}"
            )
        return sorted(set(asked))
    tp = _tp_size(job, world)
    groups = world // tp
    sizes = [
        (stop - start, group)
        for group in range(groups)
        for start, stop in [shard_bounds(job.loop.batch_size, group, groups)]
    ]
    smallest, largest = min(sizes)[1] * tp, max(sizes, key=lambda s: (s[0], -s[1]))[1] * tp
    return sorted({0, world - 1, smallest, largest})


def _request(jobs: list[tuple[Job, int, list[int]]], steps: int, fake: bool) -> Request:
    return Request(
        jobs=list(jobs),
        steps=steps,
        fake=[fake] * len(jobs),
        sys_path=[p for p in sys.path if p],
    )


def _worker_command(request: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", f"{__name__}.worker", str(request), str(out)]


def _load(path: Path) -> Any:
    with path.open("rb") as f:
        return cloudpickle.load(f)


def _run(jobs: list[tuple[Job, int, list[int]]], steps: int, fake: bool) -> list[RankFacts]:
    """Simulate every job's ranks in processes of their own, as many as this host has cores
    (each rank is a single-threaded Python walk through the step: cores are what speeds it
    up); the facts, in the order of ``jobs`` and their ranks."""
    units = [(job, world, rank) for job, world, ranks in jobs for rank in ranks]
    count = max(1, min(len(units), len(os.sched_getaffinity(0))))
    shares = [units[i::count] for i in range(count)]
    with tempfile.TemporaryDirectory(prefix="adt-simulate-") as tmp:
        running = []
        for i, share in enumerate(shares):
            request, out = Path(tmp) / f"request-{i}.pkl", Path(tmp) / f"facts-{i}.pkl"
            write_request(_request(_regroup(share), steps, fake), request)
            running.append((_start(_worker_command(request, out)), out))
        facts: list[RankFacts] = []
        for proc, out in running:
            _, stderr = proc.communicate()
            if proc.returncode != 0 or not Path(f"{out}.done").is_file():
                for other, _ in running:
                    other.kill()
                raise SimulationError(
                    f"the simulation's process failed (exit {proc.returncode}):\n{stderr[-4000:]}"
                )
            facts += _load(out)
    return sorted(facts, key=lambda f: (f.world_size, f.rank))


def _regroup(units: list[tuple[Job, int, int]]) -> list[tuple[Job, int, list[int]]]:
    """``(job, world, rank)`` units back into one entry per job with its ranks."""
    grouped: dict[int, tuple[Job, int, list[int]]] = {}
    for job, world, rank in units:
        grouped.setdefault(world, (job, world, []))[2].append(rank)
    return list(grouped.values())


def _start(command: list[str]) -> subprocess.Popen[str]:
    # Each rank walks the step on one thread: more would contend with the other processes.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)


def _assess(facts: RankFacts, count: ModelCount, hw: HardwareProfile, tp: int) -> SimulatedRank:
    """A rank's predicted step and its problems at its world size."""
    if facts.error is not None:
        first = facts.error.splitlines()[0]
        return SimulatedRank(facts, None, 0, (f"its step fails: {first}",))
    problems = []
    world = facts.world_size
    if facts.samples and min(facts.samples) == 0:
        problems.append(
            f"no samples: a global batch of {facts.global_batch} leaves it idle among "
            f"{world // tp} data-parallel ranks (raise batch_size to at least {world // tp})"
        )
    if facts.padding_only_parameters:
        problems.append(
            f"{facts.padding_only_parameters} parameter(s) have fewer rows than the {world} "
            "ranks: its shard of them is padding only"
        )
    needed = facts.memory.get("total", 0) + hw.worker_baseline_bytes
    _, per_host, _ = placement(world, hw)
    limit = hw.memory_bytes // (per_host if hw.kind == "cpu" else 1)
    if needed > limit:
        problems.append(
            f"out of memory on {hw.name.split(':')[0]}: needs {human_bytes(needed)} "
            f"(runtime included), a worker has {human_bytes(limit)}"
        )
    return SimulatedRank(facts, predict(facts, count, hw, tp), needed, tuple(problems))

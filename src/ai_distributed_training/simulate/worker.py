"""The simulation's process: ``python -m ai_distributed_training.simulate.worker REQUEST``.

A simulation process poses as each rank of its request in turn (the fake group joined as that
rank, then left), so the caller's own process never holds a process group and the user's script
is never re-run. The request (the jobs, one per world size, and the ranks) travels with
cloudpickle like a training job's; the facts come back the same way, written after every rank
so that a crash loses only the rank it happened in.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cloudpickle

from ..launch.worker import die_with_parent


@dataclass(frozen=True)
class Request:
    """What to simulate: each job (resolved for its world size) with the ranks to pose as."""

    jobs: list[tuple[object, int, list[int]]]  # (Job, world size, ranks)
    steps: int
    fake: list[bool]  # per job: under fake tensors
    sys_path: list[str]


def write_request(request: Request, path: Path) -> None:
    with path.open("wb") as f:
        cloudpickle.dump(request, f)


def main(request_path: str, out_path: str) -> None:
    die_with_parent()
    with open(request_path, "rb") as f:
        request: Request = cloudpickle.load(f)
    for entry in reversed(request.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    from ..topology import RankEnv
    from ..training.rank import open_data
    from .private import join_fake_group, leave_group
    from .rank import simulate_rank

    out = []
    # The jobs differ in their world size only: the same data, opened once for every rank.
    data = open_data(request.jobs[0][0])  # type: ignore[arg-type]
    for (job, world, ranks), fake in zip(request.jobs, request.fake, strict=True):
        for rank in ranks:
            join_fake_group(rank, world)
            try:
                env = RankEnv(rank, 0, world, 1)
                facts = simulate_rank(
                    job,  # type: ignore[arg-type]
                    env,
                    steps=request.steps,
                    fake=fake,
                    fake_group=True,
                    data=data,
                )
            finally:
                leave_group()
            out.append(facts)
            tmp = out_path + ".tmp"
            with open(tmp, "wb") as f:
                cloudpickle.dump(out, f)
            os.replace(tmp, out_path)
    Path(out_path + ".done").write_text(json.dumps(len(out)))


def main_real(request_path: str, out_path: str, rank: int, world: int, port: int) -> None:
    """One rank of a real gloo run of the request's first job on this host (to compare the
    simulation with): the same code, the same counters, and the peak resident memory the
    step added to the process (``measured_bytes``)."""
    die_with_parent()
    with open(request_path, "rb") as f:
        request: Request = cloudpickle.load(f)
    sys.path[:0] = [p for p in request.sys_path if p not in sys.path]
    from datetime import timedelta

    import torch.distributed as dist

    from ..host import peak_rss_bytes, rss_bytes
    from ..topology import RankEnv
    from ..training.rank import set_up_process
    from .rank import simulate_rank

    job = request.jobs[0][0]
    env = RankEnv(rank, rank, world, world)
    set_up_process(job, env)  # type: ignore[arg-type]
    dist.init_process_group(
        "gloo",
        f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120),
    )
    try:
        before = rss_bytes() or 0
        facts = simulate_rank(job, env, steps=request.steps, fake=False, fake_group=False)  # type: ignore[arg-type]
        # Without the strategy's process groups (tensor parallelism's mesh makes some): what
        # the data, the model and its steps added, as the simulation counts.
        facts.measured_bytes = peak_rss_bytes() - before - facts.set_up_bytes
    finally:
        dist.destroy_process_group()
    with open(out_path, "wb") as f:
        cloudpickle.dump(facts, f)


if __name__ == "__main__":
    if len(sys.argv) > 3:
        main_real(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:6]))
    else:
        main(sys.argv[1], sys.argv[2])

"""A worker process our launcher starts: ``python -m ai_distributed_training.launch.worker JOB``.

It first makes sure it cannot outlive its caller (before importing torch, which takes a second
or two), then loads the job the caller saved, trains its rank
(:func:`..training.rank.run_rank`) and, on each host's local rank 0, writes the weights and the
result back. ``@record`` writes an uncaught exception with its traceback to the error file the
elastic agent reads, which is how the caller learns why a rank failed.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import sys
from collections.abc import Iterator

#: Set by the launcher: the process that starts workers (the caller, where the agent runs).
LAUNCHER_PID = "ADT_LAUNCHER_PID"


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its launching process dies; and if it died
    already (between starting this process and this call), exit now. Either way no worker is
    left training unsupervised."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher and os.getppid() != int(launcher):  # orphaned before the guard was armed
        os._exit(1)


@contextlib.contextmanager
def collector_off_then_frozen() -> Iterator[None]:
    """Run the block (a worker's imports) with Python's cyclic garbage collector off, then
    freeze what it built and turn the collector back on.

    Importing torch, and ``torch._dynamo`` after it, builds ~450k long-lived objects; with
    the collector on, each full collection along the way walks all of them again: a quarter
    of the import time (0.8-1.0 s of ~5 s per worker on a slow 2-core VM). Frozen, they stay
    out of every later collection, in the training loop too. The cost: the import's few
    cyclic leftovers stay (~5 MiB per worker).
    """
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def main(argv: list[str] | None = None) -> None:
    """Entry point of a worker process launched by the elastic agent."""
    # Imported only now, after the guard: torch and the training code take a second or two.
    with collector_off_then_frozen():
        # DDP's constructor and every optimizer import torch._dynamo on first use: here,
        # with the imports, it is built without the collector's passes.
        import torch._dynamo  # noqa: F401
        from torch.distributed.elastic.multiprocessing.errors import record

        from ..host import exit_finished_worker
        from ..topology import RankEnv
        from ..training.rank import run_rank
        from ..training.tracking import configure_worker_logging
        from .handover import JobFiles

    @record
    def work(job_path: str) -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # the agent forwards Ctrl-C: stop at once
        files, job = JobFiles.read_job(job_path)
        env = RankEnv.from_environ()
        configure_worker_logging(env.rank, job.log_level)
        result = run_rank(job, env)
        if env.local_rank == 0:  # one rank per host hands the weights and result back
            files.write_result(result)

    work((sys.argv[1:] if argv is None else argv)[0])
    exit_finished_worker()


if __name__ == "__main__":
    die_with_parent()
    main()

"""A worker process our launcher starts: ``python -m ai_distributed_training.launch.worker JOB``.

It loads the job the caller saved, trains its rank (:func:`..training.rank.run_rank`) and, on
each host's local rank 0, writes the weights and the result back. ``@record`` writes an uncaught
exception with its traceback to the error file the elastic agent reads, which is how the caller
learns why a rank failed.
"""

from __future__ import annotations

import ctypes
import signal
import sys

from torch.distributed.elastic.multiprocessing.errors import record

from ..host import exit_finished_worker
from ..topology import RankEnv
from ..training.rank import run_rank
from ..training.tracking import configure_worker_logging
from .handover import JobFiles


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker if its launching process dies, so none is orphaned."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@record
def main(argv: list[str] | None = None) -> None:
    """Entry point of a worker process launched by the elastic agent."""
    argv = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the agent forwards Ctrl-C: stop at once
    files, job = JobFiles.read_job(argv[0])
    env = RankEnv.from_environ()
    configure_worker_logging(env.rank, job.log_level)
    result = run_rank(job, env)
    if env.local_rank == 0:  # one rank per host hands the weights and result to its caller
        files.write_result(result)


if __name__ == "__main__":
    main()
    exit_finished_worker()

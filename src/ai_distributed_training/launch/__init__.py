"""Creating workers: torch elastic on this host (one host or one of many), the worker entry,
and the files through which a job and its result travel. Process creation only: what a rank
does is :mod:`..training`'s."""

from .elastic import launch_local, rank_failures

__all__ = ["launch_local", "rank_failures"]

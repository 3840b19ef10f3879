"""Each CPU worker's share of the cores: disjoint, near-equal, covering every CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ai_distributed_training.host import allowed_cpus, cpu_share


@pytest.mark.parametrize(
    ("cpus", "workers", "expected"),
    [
        ([0, 1], 2, [[0], [1]]),
        ([0, 1], 4, [[0], [1], [0], [1]]),  # oversubscribed: round robin, one CPU each
        (list(range(8)), 3, [[0, 1, 2], [3, 4, 5], [6, 7]]),  # sizes differ by one at most
        ([2, 5, 7, 9], 2, [[2, 5], [7, 9]]),  # the CPUs the caller may use, not 0..n-1
        ([0, 1, 2], 1, [[0, 1, 2]]),
    ],
)
def test_shares(cpus: list[int], workers: int, expected: list[list[int]]) -> None:
    assert [cpu_share(cpus, r, workers) for r in range(workers)] == expected


def test_local_rank_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"local_rank=2 is not in 0\.\.1"):
        cpu_share([0, 1], 2, 2)


def test_pin_process_moves_threads_already_running() -> None:
    """A thread started before pinning (gloo's, torch's) is pinned too, not only the caller."""
    code = """
import os, threading
from ai_distributed_training.host import pin_process
ready, done = threading.Event(), threading.Event()
def run():
    ready.set(); done.wait()
t = threading.Thread(target=run); t.start(); ready.wait()
pin_process([min(os.sched_getaffinity(0))])
print(sorted(os.sched_getaffinity(t.native_id)), sorted(os.sched_getaffinity(0)))
done.set(); t.join()
"""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this OS")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first = min(allowed_cpus())
    assert out.stdout.strip() == f"[{first}] [{first}]"  # the thread, then the main thread

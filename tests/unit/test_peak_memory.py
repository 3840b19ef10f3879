"""A worker's reported peak memory is its own: a process started (fork and exec) by a big
parent must not report the parent's size (ru_maxrss does, on Linux)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = (
    "import resource, torch\n"
    "from ai_distributed_training.host import peak_rss_bytes\n"
    "print(peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's accounting")
def test_a_child_of_a_big_parent_reports_its_own_peak() -> None:
    big = bytearray(1 << 30)  # 1 GiB, every page touched: the parent's resident size
    big[::4096] = b"\x01" * len(range(0, len(big), 4096))
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    own, inherited = map(int, out.stdout.split())
    assert inherited > 1 << 30  # what ru_maxrss says: the parent's size at the fork
    assert own < 0.7 * (1 << 30)  # the child's own: Python and torch, well below
    del big

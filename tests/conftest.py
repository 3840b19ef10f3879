"""Shared fixtures: every test must leave no worker process, signal handler or env var behind."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

WORKER_MODULE = "ai_distributed_training.worker"
# Set by pytest itself, or by torch on first use of its compiler stack (not by this library).
_SET_BY_OTHERS = {"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR"}


def worker_pids() -> list[int]:
    """PIDs of live worker processes of this library (any job) on this machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if WORKER_MODULE in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    handler = signal.getsignal(signal.SIGINT)
    env = dict(os.environ)
    yield
    deadline = time.monotonic() + 5
    while worker_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker_pids() == [], "a test left worker processes running"
    assert signal.getsignal(signal.SIGINT) is handler, "the SIGINT handler was not restored"
    changed = {k for k in os.environ.keys() | env.keys() if os.environ.get(k) != env.get(k)}
    leaked = changed - _SET_BY_OTHERS
    assert not leaked, f"environment variables leaked: {leaked}"

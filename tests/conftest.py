"""Shared fixtures: every test must leave no worker process, signal handler or env var behind."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

WORKER_MODULE = "ai_distributed_training.launch.worker"
# Set by pytest itself, or by torch on first use of its compiler stack (not by this library).
_SET_BY_OTHERS = {"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR"}


# Every process this test session starts inherits this tag, orphans included, so the leak check
# sees exactly this session's workers (not another job's on the same machine).
SESSION_TAG = f"ADT_TEST_SESSION={uuid.uuid4().hex}"
os.environ["ADT_TEST_SESSION"] = SESSION_TAG.split("=", 1)[1]
# Hugging Face models are built from configs here: nothing may be downloaded.
os.environ["HF_HUB_OFFLINE"] = "1"


def worker_pids() -> list[int]:
    """PIDs of live worker processes started by this test session."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
            if WORKER_MODULE not in cmdline:
                continue
            environ = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if SESSION_TAG in environ and state != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run directories (``runs/``) land in the test's own temporary directory."""
    monkeypatch.chdir(tmp_path)


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


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any launch is a failure: for tests of errors that must come before a worker starts."""
    import ai_distributed_training.run as api

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a worker was launched for invalid input")

    monkeypatch.setattr(api, "make_launcher", forbidden)
    yield

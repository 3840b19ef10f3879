"""The live page: a running (or ended) job in the browser, from its run directory.

``adt watch [RUNS_OR_RUN_DIR]`` serves it from another terminal; ``watch=True`` on a call
serves it while the call trains. Both read only the files rank 0 and the launcher write
(``metrics.jsonl``, ``events.log``, ``summary.json``, the report), so the page, the report and
the files agree, and a job over several hosts is watched from host 0's run directory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import sys
from collections.abc import Iterator
from pathlib import Path

from ..errors import warn_user
from .server import WatchServer
from .snapshot import STRAGGLER_FACTOR, RunReader

__all__ = ["STRAGGLER_FACTOR", "RunReader", "WatchServer", "live_page", "start_server"]


def start_server(root: Path, *, host: str, port: int) -> WatchServer:
    """A started :class:`WatchServer` of the runs under ``root``; a warning when ``host`` is
    not a loopback address (the page is then readable by whoever reaches it)."""
    if not _loopback(host):
        warn_user(
            f"watch_host={host!r}: the live page (read-only: the run's metrics, events and "
            "settings) is open to whoever can reach this address; '127.0.0.1' keeps it local"
        )
    return WatchServer(root, host=host, port=port).start()


@contextlib.contextmanager
def live_page(run_dir: Path | None, *, enabled: bool, host: str, port: int) -> Iterator[None]:
    """Serve the page of ``run_dir`` while the block runs (nothing when not ``enabled``),
    printing its address; the final state reaches open pages before it stops."""
    if not enabled or run_dir is None:
        yield
        return
    server = start_server(run_dir.parent, host=host, port=port)
    print(f"[adt] watch this run live: {server.url}?run={run_dir.name}", file=sys.stderr)
    try:
        yield
    finally:
        server.stop()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

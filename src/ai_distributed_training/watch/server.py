"""The live page's server: standard library HTTP, read-only, one page and its data.

Routes (GET only; anything else is refused):

- ``/``: the page (``page.html``); ``?run=NAME`` opens that run, else the newest.
- ``/api/runs``: the runs under the root, newest first, with their state.
- ``/api/run?run=NAME``: one run's :meth:`~.snapshot.RunReader.snapshot`.
- ``/api/stream?run=NAME``: server-sent events, a snapshot each time the run's files change.
- ``/files/NAME/FILE``: a run's report (``report.html``) and its PNG plots.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from ..rundir import CONFIG_FILE
from .snapshot import RunReader

log = logging.getLogger("ai_distributed_training.watch")

#: How often a stream looks at the run's files (seconds).
POLL_S = 0.5
#: A comment line this often keeps a quiet stream's connection (and its proxies) open.
KEEPALIVE_S = 15.0
_SERVED_FILE = re.compile(r"^[\w.-]+\.(png|html)$")


class Runs:
    """The run directories under ``root``, each followed by its own :class:`RunReader`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._readers: dict[str, RunReader] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """The runs (folders holding a config.yaml), newest first (their names begin with
        their start time)."""
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if (p / CONFIG_FILE).exists()]
        return sorted(found, reverse=True)

    def reader(self, name: str) -> RunReader | None:
        """The reader of run ``name`` (a folder directly under the root), else None."""
        if not name or "/" in name or name.startswith("."):
            return None
        if not (self.root / name / CONFIG_FILE).exists():
            return None
        with self._lock:
            return self._readers.setdefault(name, RunReader(self.root / name))

    def snapshot(self, reader: RunReader) -> dict[str, Any]:
        with self._lock:  # one reader, several streams: its offsets move under the lock
            return reader.snapshot()

    def listing(self) -> list[dict[str, Any]]:
        """Every run's name, state and position, for the page's run list (no curves)."""
        out = []
        for name in self.names():
            reader = self.reader(name)
            if reader is not None:
                with self._lock:
                    out.append(reader.brief())
        return out


class _Handler(BaseHTTPRequestHandler):
    """GET only: the page, its JSON, its event stream and the run's plots."""

    runs: Runs
    stopping: threading.Event
    server_version = "adt-watch"

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/":
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", _page())
        elif url.path == "/api/runs":
            self._json(self.runs.listing())
        elif url.path in ("/api/run", "/api/stream"):
            reader = self.runs.reader(query.get("run", ""))
            if reader is None:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"no such run")
            elif url.path == "/api/run":
                self._json(self.runs.snapshot(reader))
            else:
                self._stream(reader)
        elif url.path.startswith("/files/"):
            self._file(url.path.removeprefix("/files/"))
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found")

    def _refuse(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"read-only: GET only")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _file(self, rest: str) -> None:
        name, _, filename = rest.partition("/")
        reader = self.runs.reader(name)
        path = reader.run_dir / filename if reader and _SERVED_FILE.match(filename) else None
        if path is None or not path.is_file():
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found")
            return
        kind = "image/png" if filename.endswith(".png") else "text/html; charset=utf-8"
        self._send(HTTPStatus.OK, kind, path.read_bytes())

    def _stream(self, reader: RunReader) -> None:
        """Server-sent events: the snapshot now, then each time the run's files change,
        until the client goes or the server stops."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        mark: Any = None
        quiet_since = time.monotonic()
        try:
            while not self.stopping.is_set():
                now_mark = reader.mark()
                if now_mark != mark:
                    mark, data = now_mark, json.dumps(self.runs.snapshot(reader))
                    self.wfile.write(f"data: {data}\n\n".encode())
                    self.wfile.flush()
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE_S:
                    self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
                    quiet_since = time.monotonic()
                self.stopping.wait(POLL_S)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page was closed

    def _json(self, value: Any) -> None:
        self._send(HTTPStatus.OK, "application/json", json.dumps(value).encode())

    def _send(self, status: HTTPStatus, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def _page() -> bytes:
    return files(__package__).joinpath("page.html").read_bytes()


class WatchServer:
    """The live page of the runs under ``root``, served from a background thread at
    ``host:port`` (port 0: a free one) until :meth:`stop`."""

    def __init__(self, root: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        stopping = threading.Event()
        handler = type("Handler", (_Handler,), {"runs": Runs(root), "stopping": stopping})
        self._stopping = stopping
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True  # open streams never keep the process alive
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="adt-watch", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        shown = host.decode() if isinstance(host, bytes) else host
        return f"http://{'127.0.0.1' if shown in ('0.0.0.0', '') else shown}:{port}/"

    def start(self) -> WatchServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the streams (each sends what is new first) and the server."""
        time.sleep(POLL_S * 2)  # the streams' last look: the final state reaches the page
        self._stopping.set()
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()

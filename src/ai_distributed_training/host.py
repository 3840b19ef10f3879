"""Host facts and filesystem helpers that every layer may need.

Which CPUs this process may use and how to share them between workers, the host's memory, a
process's peak memory, glibc's malloc settings, atomic writes, the per-user cache directory and
the address of a network interface: small, dependency-free facts about the machine we run on.

Why CPU workers are pinned: left to the scheduler, two one-thread workers on a two-core host
migrate between cores and wake each other across cores at every gradient all-reduce; pinned to
one core each they trained ~10% faster here (``python -m bench``). torchrun binds workers only
by their GPU's NUMA node (``--numa-binding``), so the CPU workers our launcher starts are pinned,
each to a disjoint share of the CPUs the caller may use. A rank of someone else's torchrun job
keeps whatever binding its launcher gave it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

# --- CPUs and memory -----------------------------------------------------------------------------


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (affinity masks and containers' cpusets), ascending."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity masks and containers' cpusets)."""
    return len(allowed_cpus())


def cpu_share(cpus: Sequence[int], local_rank: int, local_world_size: int) -> list[int]:
    """Local worker ``local_rank``'s CPUs out of ``cpus``: contiguous, disjoint shares whose
    sizes differ by at most one and that cover every CPU; with more workers than CPUs, one
    CPU each, dealt round robin (workers 0 and 2 share the first of two CPUs)."""
    if not 0 <= local_rank < local_world_size:
        raise ValueError(f"local_rank={local_rank} is not in 0..{local_world_size - 1}")
    if local_world_size >= len(cpus):
        return [cpus[local_rank % len(cpus)]]
    base, extra = divmod(len(cpus), local_world_size)
    start = local_rank * base + min(local_rank, extra)
    return list(cpus[start : start + base + (local_rank < extra)])


def pin_process(cpus: Sequence[int]) -> None:
    """Restrict every thread of this process to ``cpus``: those already running (torch's or
    gloo's) and, by inheritance, every thread started later. No-op where the OS has no
    affinity call."""
    if not hasattr(os, "sched_setaffinity"):
        return
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


def host_memory_bytes() -> int:
    """This host's physical memory."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def available_memory_bytes() -> int:
    """Memory this host can give a new allocation now (Linux's MemAvailable; else all of it)."""
    available = _proc_kib("/proc/meminfo", "MemAvailable")
    return host_memory_bytes() if available is None else available


def _proc_kib(path: str, key: str) -> int | None:
    """The ``key:  <n> kB`` line of a Linux ``/proc`` file, in bytes; None without one."""
    with contextlib.suppress(OSError, StopIteration, ValueError, IndexError):
        with open(path) as f:
            line = next(line for line in f if line.startswith(f"{key}:"))
        return int(line.split()[1]) * 1024
    return None


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux's ``VmRSS``; None elsewhere)."""
    return _proc_kib("/proc/self/status", "VmRSS")


def peak_rss_bytes() -> int:
    """This process's peak resident memory: Linux's ``VmHWM``, else ``ru_maxrss``.

    Why not ``ru_maxrss`` on Linux: a process started by fork and exec inherits its parent's
    resident size at the fork as its ``ru_maxrss`` (the kernel keeps the larger of the two
    across exec). Measured: a child of an 800 MB parent reported 813 MB, its own peak being
    14 MB, so every worker of a big caller (a notebook holding its data) would report the
    caller's size. ``VmHWM`` belongs to the process's own memory map."""
    own = _proc_kib("/proc/self/status", "VmHWM")
    if own is not None:
        return own
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # macOS: bytes; Linux: KiB
    return int(peak if os.uname().sysname == "Darwin" else peak * 1024)


#: glibc ``mallopt`` parameters (malloc.h) and the values workers use.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 64 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
FSDP_MMAP_THRESHOLD_BYTES = 128 * 1024


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the OS each step.

    By default glibc serves large blocks (activations, gradients) with fresh ``mmap`` calls
    and trims the heap when its top is freed, so every training step page-faults and zeroes
    megabytes again. Measured on the reference workload (2 cores): 62-65k -> 78-80k samples/s
    with 1 worker, 52-56k -> 59-61k with 2. Blocks under 64 MB come from the heap, and up to
    1 GB of freed heap is kept. Returns whether it applied (glibc only; elsewhere a no-op).
    """
    return _mallopt(MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES)


def return_freed_memory() -> bool:
    """Make glibc hand blocks of 128 KiB and more back to the OS as soon as they are freed (a
    fixed ``mmap`` threshold), for a sharded model's workers, where memory is the point.

    Why: glibc raises its ``mmap`` threshold to the size of each large block freed (up to
    32 MB), so FSDP's all-gathered blocks and unsharded gradients, freed after each use, come
    from the heap next time and stay there, fragmented over threads' arenas. Measured here
    (50M-parameter model, 4 workers, one forward and backward): 1.13 GB RSS per worker with
    glibc's defaults, 0.49 GB with this. Returns whether it applied (glibc only)."""
    return _mallopt(FSDP_MMAP_THRESHOLD_BYTES, FSDP_MMAP_THRESHOLD_BYTES)


def _mallopt(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc's mmap and trim thresholds; whether both applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    ok = int(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) == 1
    return ok and int(mallopt(_M_TRIM_THRESHOLD, trim_threshold)) == 1


def exit_finished_worker() -> NoReturn:
    """End a worker process whose work is done and written, skipping interpreter teardown.

    torch 2.13 aborts a gloo process now and then AFTER ``destroy_process_group`` returned, in
    the C++ static destructors at exit ("terminate called without an active exception"; 1 of 8
    4-rank jobs of a plain torchrun script here), which the agent would report as a failed
    job although every result is on disk. Flushing and ``os._exit`` skips those destructors.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --- files ---------------------------------------------------------------------------------------


def cache_root() -> Path:
    """Where files reused across runs live (hardware profiles, decoded Parquet):
    ``$ADT_CACHE_DIR``, else ``$XDG_CACHE_HOME/ai-distributed-training``, else
    ``~/.cache/ai-distributed-training``."""
    if os.environ.get("ADT_CACHE_DIR"):
        return Path(os.environ["ADT_CACHE_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ai-distributed-training"


def check_writable_dir(path: Path) -> None:
    """Create ``path`` if needed and prove a file can be written in it.

    Raises:
        OSError: it cannot be created or written.
    """
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path):
        pass


def write_atomically(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, fsync, then rename: readers never see a partial file.

    A failed write leaves no temporary file behind (on a full disk it would keep holding the
    space).

    Raises:
        OSError: the write failed; on a full disk, ``ENOSPC`` naming the directory and the
        space needed.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, Exception):
            _raise_if_out_of_space(err, path.parent, payload_bytes(obj))
        raise


#: A file's content fingerprint hashes this many evenly spread blocks of this many bytes (the
#: first and the last among them); a file of at most their total is hashed whole.
FINGERPRINT_BLOCKS, FINGERPRINT_BLOCK_BYTES = 64, 64 * 1024


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """What identifies a file's contents, cheaply: its size, its modification time and a hash
    of :data:`FINGERPRINT_BLOCKS` evenly spread blocks (4 MiB read of any file: 23 ms for a
    1 GB file here, 2.5 s to hash it whole; 6 ms once cached). A rewrite changes the
    modification time; a copy that kept it (``cp -p``) and the size is told by the blocks
    unless it differs only between them."""
    stat = os.stat(path)
    size, span = stat.st_size, FINGERPRINT_BLOCKS * FINGERPRINT_BLOCK_BYTES
    digest = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        if size <= span:
            digest.update(f.read())
        else:
            last = size - FINGERPRINT_BLOCK_BYTES
            for i in range(FINGERPRINT_BLOCKS):
                f.seek(last * i // (FINGERPRINT_BLOCKS - 1))
                digest.update(f.read(FINGERPRINT_BLOCK_BYTES))
    modified = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stat.st_mtime))
    nanoseconds = f"{stat.st_mtime_ns % 10**9:09d}"
    return f"{size} bytes, modified {modified}.{nanoseconds}, content {digest.hexdigest()}"


def payload_bytes(obj: Any) -> int:
    """Bytes of the tensors inside ``obj`` (nested dicts, lists and tuples): what saving it
    writes, within a little."""
    if isinstance(obj, torch.Tensor):
        return int(obj.numel() * obj.element_size())
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj)
    return 0


def _raise_if_out_of_space(err: Exception, directory: Path, needed: int) -> None:
    """Turn a failed write into "no space left on <dir>" when the disk is what ran out (torch
    reports it as ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``)."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if getattr(err, "errno", None) == errno.ENOSPC or free < needed:
        raise OSError(
            errno.ENOSPC,
            f"no space left on {directory} (needed ~{needed / 1e6:.1f} MB, "
            f"{free / 1e6:.1f} MB free)",
        ) from err


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files (``.NAME.tmp-PID``) that dead processes left in
    ``directory`` (killed mid-save); a live process's are kept. Returns what was removed."""
    return remove_stale(directory, ".*.tmp-*", lambda path: path.name.rpartition(".tmp-")[2])


def remove_stale(directory: Path, pattern: str, pid_of: Callable[[Path], str]) -> list[Path]:
    """Delete the files and folders matching ``pattern`` in ``directory`` whose owner, the
    process ``pid_of(path)`` names, no longer runs; a live process's are kept. Returns what was
    removed."""
    removed = []
    for path in directory.glob(pattern):
        pid = pid_of(path)
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's, but alive
        return True
    return True


@contextlib.contextmanager
def restored_environ() -> Iterator[None]:
    """Within the block ``os.environ`` may change (a library setting variables for itself);
    after it, it is exactly what it was."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def restored_signal_handlers(signals: Sequence[signal.Signals]) -> Iterator[None]:
    """Within the block a library may install its own handlers for ``signals`` (torch
    elastic's agent, Ray's trainer); after it, the caller's are back. Only the main thread may
    set handlers; elsewhere (a web server's worker thread, a notebook's background thread)
    nobody could have changed them either."""
    saved = {sig: signal.getsignal(sig) for sig in signals}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in saved.items():
                if handler is not None:
                    signal.signal(sig, handler)


#: Signals that end a call of the library as an exception, so its cleanup runs.
TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@contextlib.contextmanager
def terminating_signals_raise(error: Callable[[int], BaseException]) -> Iterator[None]:
    """Within the block, SIGTERM, SIGHUP and SIGQUIT raise ``error(signum)`` instead of ending
    the process on the spot, so ``finally`` blocks (temporary files, workers) run. Only the
    main thread can receive signals in Python: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise error(signum)

    previous = {sig: signal.signal(sig, handler) for sig in TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


LOCK_FILE = ".lock"


class DirectoryLockedError(OSError):
    """Another process holds the lock of a directory (see :func:`directory_lock`)."""


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (its ``.lock`` file) for the block: two jobs
    must not write checkpoints into one directory at once. The operating system releases the
    lock when the holder exits, killed or not, so a crash leaves no stale lock.

    Raises:
        DirectoryLockedError: another process holds it; the message says which.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / LOCK_FILE).open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise DirectoryLockedError(f"{directory} is in use by {holder}") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- network -------------------------------------------------------------------------------------


def interface_with_address(address: str) -> str | None:
    """The name of this host's network interface holding IPv4 ``address`` (Linux), if any."""
    if not sys.platform.startswith("linux"):
        return None
    import fcntl
    import struct

    siocgifaddr = 0x8915
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                request = struct.pack("256s", name.encode()[:15])
                reply = fcntl.ioctl(sock.fileno(), siocgifaddr, request)
            except OSError:  # no IPv4 address on this interface
                continue
        if socket.inet_ntoa(reply[20:24]) == address:
            return name
    return None

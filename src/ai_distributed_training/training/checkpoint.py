"""The checkpoint format: atomic files holding all a run needs to continue as if uninterrupted.

How a run resumes from them is :mod:`.resume`'s. A checkpoint ``step-00000042.pt`` holds the
model and optimizer state, the loop position (epoch, step within the epoch, global step, partial
epoch sums, history so far), every rank's RNG states (torch, NumPy, Python) and the resolved
config. Global rank 0 writes it through
:func:`~..host.write_atomically` (temporary file, fsync, rename), so a crash mid-save never leaves
the newest checkpoint unreadable. Everything is stored as tensors and plain data, so loading uses
``torch.load(weights_only=True)`` (no arbitrary code runs from a checkpoint file).

A sharded (FSDP) job writes a directory ``step-00000042.dcp/`` instead: each rank writes its
shards through ``torch.distributed.checkpoint`` (which can load them back at another number of
ranks), then global rank 0 writes ``meta.pt`` (everything above but the model and optimizer)
and, last, the commit marker ``COMMITTED``. A directory without the marker is an unfinished
save and is ignored.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..host import remove_stale_temporaries, write_atomically

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{8})\.(pt|dcp)$")
COMMIT_MARKER = "COMMITTED"
META_FILE = "meta.pt"
#: The content checksum stored inside each checkpoint file (and each sharded one's meta.pt).
CHECKSUM_KEY = "checksum"
#: The checkpoint format this version writes, stored under ``FORMAT_KEY``. Format 1 (no key):
#: every checkpoint written before formats were numbered, some without ``strategy``,
#: ``run_id``, ``fingerprint`` or the loop's ``samples``. Format 2 has them all.
FORMAT_VERSION = 2
FORMAT_KEY = "format"
#: A sharded checkpoint's shard files and their checksums, in its meta.pt.
SHARD_CHECKSUMS_KEY = "shard_checksums"


def checkpoint_path(directory: Path, step: int, sharded: bool = False) -> Path:
    return directory / f"step-{step:08d}.{'dcp' if sharded else 'pt'}"


def step_of(path: Path) -> int:
    """The global step a checkpoint was written at (from its name)."""
    match = _NAME.match(path.name)
    if match is None:
        raise ValueError(f"{path.name} is not named like a checkpoint (step-NNNNNNNN.pt/.dcp)")
    return int(match.group(1))


def is_checkpoint(path: Path) -> bool:
    """A checkpoint file, or a sharded checkpoint directory with its commit marker."""
    return path.is_file() or (path / COMMIT_MARKER).is_file()


def checkpoint_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's facts without loading (or verifying) its tensors: ``strategy``,
    ``run_id``, ``fingerprint``, ``loop`` (absent in checkpoints older than them)."""
    if path.is_dir():
        meta = torch.load(path / META_FILE, map_location="cpu", weights_only=True)
    else:
        meta = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    keys = (FORMAT_KEY, "strategy", "run_id", "fingerprint", "resumed_from", "loop")
    return upgraded({k: meta[k] for k in keys if k in meta})


def upgraded(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint (or its facts) of any format this version reads, in today's format: the
    one place that knows what older formats lack. (The layout of the per-rank metric sums is
    the meter's own: :meth:`~.metrics.Meter.upgrade`.)

    Raises:
        ValueError: a checkpoint from a newer version of the library.
    """
    version = int(state.get(FORMAT_KEY, 1))
    if version > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint format {version} is newer than this version's {FORMAT_VERSION}: "
            "upgrade ai-distributed-training to resume it"
        )
    if version < 2:
        state.setdefault("strategy", "ddp")  # the only strategy before FSDP
        state.setdefault("run_id", None)  # before run ids: belongs to no run
        state.setdefault("fingerprint", {})  # before fingerprints: taken as it is
        state.setdefault("resumed_from", None)
        if isinstance(state.get("loop"), dict):
            state["loop"].setdefault("samples", None)  # the loop counts them again
    state[FORMAT_KEY] = FORMAT_VERSION
    return state


def written_with(path: Path) -> str:
    """The strategy that wrote the checkpoint ``path`` (read without loading its tensors)."""
    return str(checkpoint_meta(path)["strategy"])


def run_of(path: Path) -> str | None:
    """The run id of the call that wrote ``path``; None if unreadable or older than run ids."""
    try:
        run_id: str | None = checkpoint_meta(path)["run_id"]
        return run_id
    except Exception:  # truncated or corrupt: belongs to no one we can name
        return None


def of_run(run_id: str) -> Callable[[dict[str, Any]], bool]:
    """A test of a checkpoint's facts (:func:`checkpoint_meta`): written by run ``run_id``."""
    return lambda meta: meta.get("run_id") == run_id


def run_checkpoints(directory: Path, run_id: str) -> list[Path]:
    """The checkpoints run ``run_id`` wrote in ``directory``, newest first."""
    return [p for p in list_checkpoints(directory) if run_of(p) == run_id]


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in ``directory`` (files, and sharded directories with their commit marker),
    newest (highest step) first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name) and is_checkpoint(p)]
    return sorted(found, key=step_of, reverse=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read one checkpoint and verify its checksums; raises if it is truncated or corrupt. A
    sharded one's model and optimizer stay on disk: ``dcp_dir`` says where (the strategy loads
    them into its shards), their files verified here."""
    if path.is_dir():
        if not (path / COMMIT_MARKER).is_file():
            raise ValueError(f"{path.name} has no {COMMIT_MARKER} marker: an unfinished save")
        state = _load_verified(path / META_FILE)
        for name, expected in state.pop(SHARD_CHECKSUMS_KEY, {}).items():
            if file_digest(path / name) != expected:
                raise ValueError(f"{path.name}/{name}: checksum mismatch (the shard is corrupt)")
        state["dcp_dir"] = str(path)
    else:
        state = _load_verified(path)
    if not isinstance(state, dict) or "loop" not in state or not {"model", "dcp_dir"} & set(state):
        raise ValueError(f"{path.name} is not a checkpoint of this library")
    return upgraded(state)


def _load_verified(path: Path) -> Any:
    """``torch.load`` (which does not check the archive's CRCs), then the content checksum
    stored when the file was written; files from before checksums load unchecked."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and CHECKSUM_KEY in state:
        expected = state.pop(CHECKSUM_KEY)
        if content_digest(state) != expected:
            raise ValueError(
                f"{path.name}: checksum mismatch (its bytes changed after it was written)"
            )
    return state


def write_verified(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` atomically with its content checksum inside, computed before the write
    (so a corruption of the bytes on disk is caught on load)."""
    write_atomically({**state, CHECKSUM_KEY: content_digest(state)}, path)


def content_digest(obj: Any) -> str:
    """SHA-256 of a checkpoint's content, in order: every tensor's dtype, shape and bytes, every
    other value's ``repr`` (what ``torch.load`` gives back is hashed the same way)."""
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def _feed(digest: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)  # 0-dim tensors too
        digest.update(f"T{t.dtype}{tuple(obj.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().data)  # the buffer itself: no copy
    elif isinstance(obj, dict):
        digest.update(b"{")
        for key, value in obj.items():
            _feed(digest, key)
            _feed(digest, value)
        digest.update(b"}")
    elif isinstance(obj, (list, tuple)):
        digest.update(b"[" if isinstance(obj, list) else b"(")
        for value in obj:
            _feed(digest, value)
        digest.update(b"]")
    else:
        digest.update(f"{type(obj).__name__}:{obj!r};".encode())


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (a shard of a sharded checkpoint)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_newest_valid(
    directory: Path, belongs: Callable[[dict[str, Any]], bool] | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``directory`` that loads and passes its checksums (and whose
    facts, see :func:`checkpoint_meta`, satisfy ``belongs``); unreadable or corrupt ones are
    skipped with a warning naming them. None when there is none."""
    for path in list_checkpoints(directory):
        try:
            if belongs is not None and not belongs(checkpoint_meta(path)):
                continue  # another run's: not a candidate, and not a problem
            return path, load_checkpoint(path)
        except Exception as err:  # truncated, corrupt, foreign: fall back to the previous one
            log.warning(
                "skipping unreadable checkpoint %s (%s: %s); trying the previous one",
                path,
                type(err).__name__,
                err,
            )
    return None


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; keep the newest ``keep`` of
    its run (``state["run_id"]``)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, step)
    write_verified({**state, FORMAT_KEY: FORMAT_VERSION}, path)
    prune(directory, keep, state.get("run_id"))
    return path


def commit_sharded(path: Path, meta: dict[str, Any], keep: int) -> Path:
    """Finish the sharded checkpoint ``path`` (its shards written by every rank): its
    ``meta.pt`` with every shard file's checksum, then the commit marker, last; keep the newest
    ``keep`` checkpoints."""
    shards = {f.name: file_digest(f) for f in sorted(path.iterdir()) if f.is_file()}
    meta = {**meta, FORMAT_KEY: FORMAT_VERSION, SHARD_CHECKSUMS_KEY: shards}
    write_verified(meta, path / META_FILE)
    write_atomically({"committed": True}, path / COMMIT_MARKER)
    prune(path.parent, keep, meta.get("run_id"))
    return path


def prune(directory: Path, keep: int, run_id: str | None = None) -> None:
    """Delete all but the newest ``keep`` checkpoints of run ``run_id`` (another run's are never
    touched; None: every checkpoint counts), and what dead processes left half-saved."""
    remove_stale_temporaries(directory)
    found = list_checkpoints(directory) if run_id is None else run_checkpoints(directory, run_id)
    for old in found[keep:]:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


# --- RNG states as tensors and plain data (so weights_only loading works) -----------------------


def capture_rng() -> dict[str, Any]:
    """This process's torch, NumPy and Python RNG states (and CUDA's, when used)."""
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])

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

import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..host import write_atomically

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{8})\.(pt|dcp)$")
COMMIT_MARKER = "COMMITTED"
META_FILE = "meta.pt"


def checkpoint_path(directory: Path, step: int, sharded: bool = False) -> Path:
    return directory / f"step-{step:08d}.{'dcp' if sharded else 'pt'}"


def is_checkpoint(path: Path) -> bool:
    """A checkpoint file, or a sharded checkpoint directory with its commit marker."""
    return path.is_file() or (path / COMMIT_MARKER).is_file()


def written_with(path: Path) -> str:
    """The strategy that wrote the checkpoint ``path`` (read without loading its tensors)."""
    if path.is_dir():
        meta = torch.load(path / META_FILE, map_location="cpu", weights_only=True)
    else:
        meta = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return str(meta.get("strategy", "ddp"))


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in ``directory`` (files, and sharded directories with their commit marker),
    newest (highest step) first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name) and is_checkpoint(p)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)), reverse=True)  # type: ignore[union-attr]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read one checkpoint; raises if it is truncated or corrupt. A sharded one's model and
    optimizer stay on disk: ``dcp_dir`` says where (the strategy loads them into its shards)."""
    if path.is_dir():
        if not (path / COMMIT_MARKER).is_file():
            raise ValueError(f"{path.name} has no {COMMIT_MARKER} marker: an unfinished save")
        state = torch.load(path / META_FILE, map_location="cpu", weights_only=True)
        state["dcp_dir"] = str(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "loop" not in state or not {"model", "dcp_dir"} & set(state):
        raise ValueError(f"{path.name} is not a checkpoint of this library")
    return state


def load_newest_valid(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint in ``directory``; unreadable ones are skipped with a
    warning naming them. None when there is none."""
    for path in list_checkpoints(directory):
        try:
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
    """Write ``state`` atomically as the checkpoint of ``step``; keep the newest ``keep``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, step)
    write_atomically(state, path)
    prune(directory, keep)
    return path


def commit_sharded(path: Path, meta: dict[str, Any], keep: int) -> Path:
    """Finish the sharded checkpoint ``path`` (its shards written by every rank): its
    ``meta.pt``, then the commit marker, last; keep the newest ``keep`` checkpoints."""
    write_atomically(meta, path / META_FILE)
    write_atomically({"committed": True}, path / COMMIT_MARKER)
    prune(path.parent, keep)
    return path


def prune(directory: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(directory)[keep:]:
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

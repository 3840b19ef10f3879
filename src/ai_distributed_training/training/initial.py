"""Starting weights from files (setting ``init_from``): pretrained weights, loaded shard-wise.

Accepted: a ``.safetensors`` file or a folder of them (Hugging Face's layout, this library's
export), one of this library's checkpoints (a ``step-*.pt`` file or a sharded ``step-*.dcp``
folder: its model weights only). Under FSDP every rank reads only the slices of each tensor it
holds (``torch.distributed.checkpoint``'s readers, which read by offset); under DDP every rank
reads all of it (it holds all of it). :func:`stored_shapes` is what the caller checks the
model against before any worker starts.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .checkpoint import load_checkpoint

#: The suffixes of what ``init_from`` accepts, by kind.
SAFETENSORS, CHECKPOINT_FILE, CHECKPOINT_DIR = ".safetensors", ".pt", ".dcp"


def kind_of(path: Path) -> str:
    """'safetensors', 'checkpoint' (a .pt file) or 'dcp' (a sharded checkpoint folder);
    raises ValueError naming what is accepted."""
    if path.suffix == SAFETENSORS and path.is_file():
        return "safetensors"
    if path.is_dir() and path.suffix != CHECKPOINT_DIR and any(path.glob(f"*{SAFETENSORS}")):
        return "safetensors"
    if path.suffix == CHECKPOINT_FILE and path.is_file():
        return "checkpoint"
    if path.suffix == CHECKPOINT_DIR and path.is_dir():
        return "dcp"
    raise ValueError(
        f"init_from={str(path)!r} is not a .safetensors file, a folder of them, or a "
        "checkpoint of this library (step-*.pt or step-*.dcp)"
    )


def stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each stored weight's name and shape, read from headers and metadata. A checkpoint is
    verified first, as a resume reads it (committed, its checksums, this library's): the
    caller checks once, before launch; the workers then only load. Raises ValueError for a
    file that is not one of these, or a checkpoint that is unfinished or corrupt."""
    kind = kind_of(path)
    if kind in ("checkpoint", "dcp"):
        load_checkpoint(path)
    return _shapes(path, kind)


def _shapes(path: Path, kind: str) -> dict[str, tuple[int, ...]]:
    """:func:`stored_shapes` without the verification."""
    if kind == "safetensors":
        shapes: dict[str, tuple[int, ...]] = {}
        for file in safetensors_files(path):
            with safe_open(str(file), framework="pt") as f:
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})  # noqa: SIM118
        return shapes
    if kind == "dcp":
        from torch.distributed.checkpoint.filesystem import FileSystemReader

        stored = FileSystemReader(str(path)).read_metadata().state_dict_metadata
        return {
            k.removeprefix("model."): tuple(getattr(m, "size", ()))
            for k, m in stored.items()
            if k.startswith("model.")
        }
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)["model"]
    return {k: tuple(v.shape) for k, v in state.items()}


def load_initial_weights(model: nn.Module, path: Path) -> None:
    """Load ``path``'s weights into ``model`` (as wrapped by the strategy: DDP, FSDP or none)
    in place, this rank reading what it holds (collective under FSDP: every rank)."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        set_model_state_dict,
    )
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    kind = kind_of(path)
    if kind == "checkpoint":  # whole tensors, mapped: each rank copies in what it holds
        full = torch.load(path, map_location="cpu", mmap=True, weights_only=True)["model"]
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, full, options=options)
        return
    state = get_model_state_dict(model)  # this rank's shards under FSDP: what it reads
    stored = _shapes(path, kind)
    state = {k: v for k, v in state.items() if k in stored}  # a tied alias loads via its twin
    if kind == "dcp":
        dcp_load({"model": state}, storage_reader=FileSystemReader(str(path)))
    else:
        with _folder_of(path) as folder:
            dcp_load(state, storage_reader=HuggingFaceStorageReader(str(folder)))
    set_model_state_dict(model, state, options=StateDictOptions(strict=False))


def safetensors_files(path: Path) -> list[Path]:
    """``path`` if it is a file, else the ``.safetensors`` files directly in it, in order."""
    return [path] if path.is_file() else sorted(path.glob(f"*{SAFETENSORS}"))


@contextlib.contextmanager
def _folder_of(path: Path) -> Iterator[Path]:
    """The folder DCP's Hugging Face reader reads: ``path`` itself, or for a single file a
    temporary folder holding a link to it."""
    if path.is_dir():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="adt-init-") as tmp:
        (Path(tmp) / path.name).symlink_to(path.resolve())
        yield Path(tmp)

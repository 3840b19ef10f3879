"""The trained weights written to disk without gathering them on any rank: a Hugging Face-style
safetensors export (``model-0000i-of-0000n.safetensors`` and its index) beside each rank's
shards (``sharded/``), through ``torch.distributed.checkpoint``'s Hugging Face writer.

Each rank writes only what it holds (its FSDP shards; under DDP, where every rank holds all of
it, DCP has one rank write each tensor); rank 0 then consolidates the shards into whole tensors,
file region by file region, never a whole model in memory. The export loads with
``safetensors`` into a module on one process (:func:`load_export`), or resharded onto any
number of ranks with DCP's ``HuggingFaceStorageReader``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import get_model_state_dict
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from .initial import safetensors_files

#: Full bytes per export file: each rank serializes its part of one file at a time, so this
#: bounds what the export adds to a worker's memory (about twice its part of one file).
FILE_BYTES = 256 * 2**20


def export_safetensors(model: nn.Module, directory: Path) -> None:
    """Write ``model``'s weights (wrapped by DDP or sharded by FSDP) into ``directory``
    (collective: every rank)."""
    state = dict(get_model_state_dict(model))
    writer = HuggingFaceStorageWriter(
        str(directory),
        fqn_to_index_mapping=file_of(state),
        save_distributed=True,
        enable_consolidation=True,
    )
    dcp_save(state, storage_writer=writer)


def file_of(state: dict[str, Any]) -> dict[str, int]:
    """Each tensor's export file (1-based), in order, a new file once :data:`FILE_BYTES` of
    whole tensors are in the current one (a bigger tensor gets a file of its own)."""
    index, used, files = 1, 0, {}
    for name, tensor in state.items():
        size = tensor.numel() * tensor.element_size()  # the whole tensor's, if a DTensor
        if used and used + size > FILE_BYTES:
            index, used = index + 1, 0
        files[name], used = index, used + size
    return files


def load_export(directory: Path) -> dict[str, torch.Tensor]:
    """The whole state dict of an export (what ``load_state_dict`` takes)."""
    files = safetensors_files(directory)  # the consolidated ones (not sharded/'s)
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {directory}")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(load_file(path))
    return state

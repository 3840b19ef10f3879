"""How the safetensors export splits tensors into files (each rank serializes its part of one
file at a time, so the file size bounds what the export adds to a worker's memory)."""

from __future__ import annotations

import torch

from ai_distributed_training.training import export


def test_tensors_fill_files_in_order_up_to_the_file_size(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(export, "FILE_BYTES", 100)
    state = {  # float32: 4 bytes each
        "a": torch.zeros(10),  # 40
        "b": torch.zeros(15),  # 60: fills file 1 to 100
        "c": torch.zeros(1),  # 4: file 2
        "big": torch.zeros(50),  # 200: a file of its own
        "d": torch.zeros(1),
    }
    assert export.file_of(state) == {"a": 1, "b": 1, "c": 2, "big": 3, "d": 4}

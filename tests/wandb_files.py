"""Reading W&B's offline run files (``run-<id>.wandb``) back, for the trackers' tests.

wandb has no public reader of its own files. They are LevelDB-style logs: a 7-byte header
(``:W&B``, a magic number, a version), then 32 KiB blocks of chunks, each with a 7-byte header
(CRC-32, length, kind: whole, first, middle, last); a whole or reassembled payload is one
``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
WHOLE, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    """Every record of one ``.wandb`` file, in order (each chunk's CRC checked)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if left < HEADER or (length == 0 and kind == 0):  # a block's zero padding
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, f"bad chunk in {path}"
        pos += HEADER + length
        pending = chunk if kind in (WHOLE, FIRST) else pending + chunk
        if kind in (WHOLE, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def history(path: Path) -> list[dict[str, Any]]:
    """The rows ``run.log`` wrote (``_step`` and the logged keys)."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def kinds(path: Path) -> set[str]:
    """The kinds of records in a file (history, artifact, exit, ...)."""
    return {str(record.WhichOneof("record_type")) for record in records(path)}

"""Every worker pays for what it imports: heavy optional modules load only when used."""

from __future__ import annotations

import subprocess
import sys

# Measured: torch.distributed.checkpoint (FSDP's checkpoints) adds ~0.5 s to a worker's start.
LAZY = ("torch.distributed.checkpoint", "torch.distributed.fsdp", "pyarrow")


def test_a_ddp_worker_does_not_import_fsdp_or_parquet_modules() -> None:
    code = (
        "import sys, ai_distributed_training.worker, ai_distributed_training.api\n"
        f"print([m for m in {LAZY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

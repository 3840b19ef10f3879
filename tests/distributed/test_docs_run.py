"""Every code block the documentation marks runnable runs as written, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs_blocks import Block, doc_pages, runnable_blocks


@pytest.mark.parametrize("block", runnable_blocks(doc_pages()), ids=str)
def test_a_runnable_docs_block_runs(block: Block, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", block.code],
        cwd=tmp_path,  # its run directory lands here
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"{block} failed:\n{proc.stderr[-3000:]}"

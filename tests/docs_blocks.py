"""The documentation's code blocks marked runnable: ``<!-- runnable ... -->`` on the line before
a fenced ``python`` block. The suite runs each as written (tests/distributed/test_docs.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- runnable"


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based, of the block's first code line
    code: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def runnable_blocks(pages: list[Path]) -> list[Block]:
    """Every marked block of ``pages``.

    Raises:
        ValueError: a marker not followed by a ``python`` block (it would silently run nothing).
    """
    found = []
    for page in pages:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.startswith(MARKER):
                continue
            if i + 1 >= len(lines) or lines[i + 1].strip() != "```python":
                raise ValueError(f"{page.name}:{i + 1}: a runnable marker before no python block")
            end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
            found.append(Block(page.name, i + 3, "\n".join(lines[i + 2 : end]) + "\n"))
    return found


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

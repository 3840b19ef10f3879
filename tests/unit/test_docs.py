"""The documentation builds as a site with one command, and its runnable blocks are found."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs_blocks import ROOT, doc_pages, runnable_blocks


def test_the_docs_build_as_a_site_without_a_warning(tmp_path: Path) -> None:
    """`make docs` (mkdocs build --strict): every page in the nav, every link and every API
    reference entry resolves."""
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "index.html").is_file()


def test_every_docs_page_is_in_the_site_and_linked_from_the_readme() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f": {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"
        if page.name != "index.md":
            assert f"(docs/{page.name}" in readme, f"the README does not link {page.name}"


def test_the_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_runnable_blocks_are_found_and_a_stray_marker_is_an_error(tmp_path: Path) -> None:
    blocks = runnable_blocks(doc_pages())
    assert len(blocks) >= 2 and all("import" in b.code for b in blocks)
    page = tmp_path / "bad.md"
    page.write_text("<!-- runnable -->\n```bash\necho hi\n```\n")
    with pytest.raises(ValueError, match=r"bad\.md:1: a runnable marker before no python block"):
        runnable_blocks([page])

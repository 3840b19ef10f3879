"""Regenerate the settings table of docs/api.md from the config model (run by `make readme`)."""

from pathlib import Path

from ai_distributed_training.config import settings_markdown_table

START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
readme = Path(__file__).resolve().parents[1] / "docs" / "api.md"
text = readme.read_text()
head, rest = text.split(START, 1)
_, tail = rest.split(END, 1)
readme.write_text(f"{head}{START}\n{settings_markdown_table()}\n{END}{tail}")
print(f"updated {readme}")

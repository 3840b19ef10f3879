"""LR schedule shapes and the docs' settings table (generated, so it cannot drift)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ai_distributed_training.config import TrainingSettings, settings_markdown_table
from ai_distributed_training.config.sections import sections_of
from ai_distributed_training.training.optim import lr_factor

API_DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


@pytest.mark.parametrize(
    ("schedule", "expected_mid", "expected_end"),
    [("constant", 1.0, 1.0), ("linear", 0.5, 0.0), ("cosine", 0.5, 0.0)],
)
def test_schedules_after_warmup(schedule: str, expected_mid: float, expected_end: float) -> None:
    factor = lr_factor(
        sections_of(TrainingSettings(lr_schedule=schedule, warmup_steps=10)).optim, 110
    )
    assert [factor(i) for i in range(3)] == [0.1, 0.2, 0.3]  # linear warmup from 0
    assert factor(9) == 1.0
    assert factor(60) == pytest.approx(expected_mid)
    assert factor(110) == pytest.approx(expected_end, abs=1e-12)


def test_cosine_shape() -> None:
    factor = lr_factor(sections_of(TrainingSettings(lr_schedule="cosine")).optim, 100)
    assert factor(25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_warmup_ratio() -> None:
    factor = lr_factor(
        sections_of(TrainingSettings(warmup_ratio=0.25)).optim, 40
    )  # 10 warmup steps
    assert factor(4) == 0.5 and factor(10) == 1.0


def test_the_settings_table_is_generated_from_the_config_model() -> None:
    text = API_DOCS.read_text()
    start, end = "<!-- settings-table:start -->\n", "\n<!-- settings-table:end -->"
    assert start in text and end in text, "docs/api.md lacks the settings-table markers"
    table = text.split(start, 1)[1].split(end, 1)[0]
    assert table == settings_markdown_table(), "run: make readme"

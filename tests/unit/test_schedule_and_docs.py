"""LR schedule shapes and the README settings table (generated, so it cannot drift)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ai_distributed_training.config import TrainingSettings, settings_markdown_table
from ai_distributed_training.training.optim import lr_factor

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize(
    ("schedule", "expected_mid", "expected_end"),
    [("constant", 1.0, 1.0), ("linear", 0.5, 0.0), ("cosine", 0.5, 0.0)],
)
def test_schedules_after_warmup(schedule: str, expected_mid: float, expected_end: float) -> None:
    factor = lr_factor(TrainingSettings(lr_schedule=schedule, warmup_steps=10), 110)
    assert [factor(i) for i in range(3)] == [0.1, 0.2, 0.3]  # linear warmup from 0
    assert factor(9) == 1.0
    assert factor(60) == pytest.approx(expected_mid)
    assert factor(110) == pytest.approx(expected_end, abs=1e-12)


def test_cosine_shape() -> None:
    factor = lr_factor(TrainingSettings(lr_schedule="cosine"), 100)
    assert factor(25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_warmup_ratio() -> None:
    factor = lr_factor(TrainingSettings(warmup_ratio=0.25), 40)  # 10 warmup steps
    assert factor(4) == 0.5 and factor(10) == 1.0


def test_readme_settings_table_is_generated_from_the_config_model() -> None:
    text = README.read_text()
    start, end = "<!-- settings-table:start -->\n", "\n<!-- settings-table:end -->"
    assert start in text and end in text, "README lacks the settings-table markers"
    table = text.split(start, 1)[1].split(end, 1)[0]
    assert table == settings_markdown_table(), "run: make readme"

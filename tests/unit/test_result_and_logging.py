"""The result's summary and the logging defaults."""

from __future__ import annotations

import logging

import pytest
import torch

from ai_distributed_training.result import TrainingResult
from ai_distributed_training.training.tracking import PACKAGE_LOGGER, caller_log_level


def test_repr_is_one_short_line_without_weights_or_history() -> None:
    result = TrainingResult(
        torch.nn.Linear(1000, 1000),
        model_name="m",
        nodes_used=3,
        status="distributed_trained",
        final_loss=0.123456,
        metrics={"val_accuracy": 0.9},
        history=[{"epoch": 1}] * 500,
    )
    text = repr(result)
    assert "\n" not in text and len(text) < 300
    assert "model_name='m'" in text and "final_loss=0.1235" in text
    assert "val_accuracy=0.9" in text and "history" not in text
    assert f"{result}" == text and result["nodes_used"] == 3


def test_workers_are_quiet_when_the_caller_configured_no_logging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    assert caller_log_level() == "WARNING"


def test_workers_follow_the_callers_level_when_logging_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.StreamHandler()])
    monkeypatch.setattr(logging.getLogger(PACKAGE_LOGGER), "level", logging.INFO)
    assert caller_log_level() == "INFO"

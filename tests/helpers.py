"""Helpers shared by the tests: running the `adt` command, comparing trained weights."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

import torch

from ai_distributed_training import TrainingResult


def adt(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ai_distributed_training ARGS`` (the `adt` command), ``env`` added to ours."""
    return subprocess.run(
        [sys.executable, "-m", "ai_distributed_training", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold exactly the same tensors under the same keys."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def bitwise_equal(a: TrainingResult, b: TrainingResult) -> bool:
    """Whether two results' trained models hold exactly the same tensors."""
    return same_tensors(a.model.state_dict(), b.model.state_dict())

"""Warnings point at the user's line: the first frame outside the package."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import ai_distributed_training
from ai_distributed_training.errors import warn_user

PACKAGE = Path(ai_distributed_training.__file__).parent


def test_a_warning_from_the_user_points_at_the_user() -> None:
    with pytest.warns(UserWarning, match="look here") as got:
        warn_user("look here")
    assert got[0].filename == __file__


def test_a_warning_from_deep_in_the_package_points_past_all_of_it(tmp_path: Path) -> None:
    """A chain of the package's own frames (here: a module compiled as if it lived in the
    package) is skipped whole; the user's frame is named."""
    inner = compile(
        "def deep(warn, n):\n    return warn('deep') if n == 0 else deep(warn, n - 1)\n",
        str(PACKAGE / "pretend_module.py"),
        "exec",
    )
    scope: dict[str, object] = {}
    exec(inner, scope)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        scope["deep"](warn_user, 5)  # type: ignore[operator]
    assert [w.filename for w in got] == [__file__]

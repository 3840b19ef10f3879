"""The Ray launcher's settings: wrong ones, a missing Ray and an unreachable cluster are said
before any worker starts, naming the value and the way out."""

from __future__ import annotations

import importlib.util
import sys
import time

import pytest

from ai_distributed_training import ConfigError, DistributedTraining
from ai_distributed_training.cli import _parser, launcher_settings
from ai_distributed_training.launch.ray_launcher import poll_interval_s

MODEL = {"model_name": "m", "hidden_sizes": [8]}
DATA = {"samples": 64, "features": 4}


def train(**settings: object) -> None:
    DistributedTraining(epochs=1).train_distributed(MODEL, DATA, nodes=2, **settings)


def test_missing_ray_is_said_with_the_install_command(
    no_launch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    with pytest.raises(ConfigError, match=r"needs Ray Train.*ai-distributed-training\[ray\]"):
        train(launcher="ray")


def test_unreachable_ray_address_fails_fast(no_launch: None) -> None:
    if importlib.util.find_spec("ray") is None:  # not imported here: Ray's import sets env vars
        pytest.skip("Ray is not installed (the [ray] extra)")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"ray_address='127.0.0.1:1': nothing answers there"):
        train(launcher="ray", ray_address="127.0.0.1:1")
    assert time.monotonic() - started < 10  # Ray itself would retry for minutes


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ray_address": "auto"}, r"ray_address='auto' only apply with launcher='ray'"),
        ({"ray_storage_path": "/x"}, r"ray_storage_path='/x' only apply with launcher='ray'"),
        ({"launcher": "ray", "ray_address": "head"}, r"ray_address='head' is not an address"),
        ({"launcher": "ray", "nnodes": 2}, r"nnodes=2 is for launcher='elastic'"),
        # Said before a Ray cluster is joined (or started), as on this host.
        ({"launcher": "ray", "sync_batchnorm": True}, r"sync_batchnorm=True needs GPUs"),
        ({"launcher": "ray", "precision": "fp16"}, r"precision='fp16' needs GPUs"),
        ({"launcher": "slurm"}, r"launcher='slurm' is invalid.*'elastic'.*'ray'"),
    ],
)
def test_bad_launcher_settings_are_named(
    no_launch: None, settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        train(**settings)


def test_cli_launcher_flags_become_settings() -> None:
    args = _parser().parse_args(["train", "--launcher", "ray", "--ray-address", "auto"])
    assert launcher_settings(args) == {"launcher": "ray", "ray_address": "auto"}
    assert launcher_settings(_parser().parse_args(["train"])) == {}


def test_ray_trains_poll_interval_grows_with_the_workers_up_to_rays_default() -> None:
    assert [poll_interval_s(n) for n in (1, 2, 20, 50, 200, 1000)] == [0.2, 0.2, 0.2, 0.5, 2.0, 2.0]

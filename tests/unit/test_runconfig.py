"""YAML run configs and --set overrides (no workers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_distributed_training import ConfigError
from ai_distributed_training.config.runfile import DEMO, resolve


def test_no_arguments_is_the_documented_demo() -> None:
    model, data, settings = resolve(None, [], None)
    assert model == DEMO["model"] and data == DEMO["data"] and settings == {"nodes": 3}


def test_set_values_are_parsed_as_yaml_and_nest() -> None:
    model, data, settings = resolve(
        None,
        [
            "data.samples=3000",
            "model.hidden_sizes=[8, 8]",
            "learning_rate=1e-2",
            "runs_dir=null",
            "use_gpus=false",
        ],
        2,
    )
    assert data == {"samples": 3000, "features": 128}
    assert model == {"model_name": "NeuralNet_Model", "hidden_sizes": [8, 8]}
    assert settings == {"nodes": 2, "learning_rate": 0.01, "runs_dir": None, "use_gpus": False}


def test_file_then_set_then_nodes(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data: data.csv\nnodes: 4\nepochs: 7\n")
    _, data, settings = resolve(str(path), ["epochs=2"], None)
    assert data == str(tmp_path / "data.csv")  # relative to the file (issue 16)
    assert settings == {"nodes": 4, "epochs": 2}


def test_nested_key_on_a_path_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data: data.csv\n")
    with pytest.raises(ConfigError, match="data is a file path"):
        resolve(str(path), ["data.samples=3"], None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "must hold a mapping"),
        ("model: [unclosed\n", "not valid YAML"),
        ("features: 3\n", "unknown key 'features'.*'data.features'"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        resolve(str(path), [], None)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve("/nonexistent.yaml", [], None)


def test_relative_paths_in_a_run_file_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not to wherever the command happens to run."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "run.yaml").write_text(
        "data: tables/train.csv\nvalidation_data: /abs/val.csv\nresume: auto\n"
        "checkpoint_dir: ckpt\n"
    )
    monkeypatch.chdir(tmp_path)
    _, data, settings = resolve(str(folder / "run.yaml"), ["runs_dir=out"], None)
    assert data == str(folder / "tables" / "train.csv")
    assert settings["validation_data"] == "/abs/val.csv" and settings["resume"] == "auto"
    assert settings["checkpoint_dir"] == str(folder / "ckpt")
    assert settings["runs_dir"] == "out"  # --set values stay relative to where you run

"""Run configs for the CLI: a YAML file with the API's own names, plus ``--set`` overrides.

A run config is a mapping with top-level ``model`` and ``data`` (the same specs the API accepts,
or a data file path) and every training setting by its API name::

    model: {model_name: mn, hidden_sizes: [64]}
    data: {samples: 3000, features: 16}     # or: data: path/to/table.csv
    nodes: 2
    epochs: 3

``--set key=value`` uses the same names, dotted for nesting (``--set data.samples=3000``); values
are parsed as YAML (``3`` is an int, ``[64, 64]`` a list, ``null`` None). Anything not given falls
back to the embedded demo (the documented first example).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .settings import ModelSpec, SyntheticDataSpec, TrainingSettings

#: The documented first example, run by ``adt train`` with no arguments.
DEMO: dict[str, Any] = {
    "model": {"model_name": "NeuralNet_Model"},
    "data": {"samples": 100000, "features": 128},
    "nodes": 3,
}
#: Settings that only a Python caller can give (they hold code).
PYTHON_ONLY = (
    "loss_fn",
    "forward",
    "count_fn",
    "collate_fn",
    "train_step",
    "scheduler",
    "callbacks",
    "metrics",
)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; learning rates are written that way, so read
    exponent notation without a dot as a float too."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # safe: a SafeLoader subclass


def _valid_keys() -> list[str]:
    return ["model", "data", *(n for n in TrainingSettings.model_fields if n not in PYTHON_ONLY)]


def _nested_keys() -> list[str]:
    return [f"model.{n}" for n in ModelSpec.model_fields] + [
        f"data.{n}" for n in SyntheticDataSpec.model_fields
    ]


def _closest(key: str) -> str:
    candidates = _valid_keys() + _nested_keys()
    bare = {c.split(".")[-1]: c for c in _nested_keys()}
    if key in bare:  # a nested key written at the top level
        return f" (did you mean {bare[key]!r}?)"
    close = difflib.get_close_matches(key, candidates, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; ConfigError if unreadable or not a mapping."""
    try:
        loaded = _load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"cannot read config file {str(path)!r}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of settings, not "
            f"{type(loaded).__name__}"
        )
    return loaded


def apply_set(config: dict[str, Any], assignment: str) -> None:
    """Apply one ``key=value`` (dotted keys for nesting) to ``config`` in place."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r} must look like key=value (e.g. epochs=3)")
    try:
        value = _load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            if isinstance(child, str) and part == "data":  # a file path: no nested keys
                raise ConfigError(f"--set {key}: data is a file path here, not a spec")
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def resolve(
    config_file: str | None, sets: Sequence[str], nodes: int | None
) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, data, settings)`` from the demo defaults, a config file and overrides.

    Raises:
        ConfigError: unreadable file, unknown or misplaced key (naming it and the closest valid
            one), or a malformed ``--set``. Values are validated later by the same models the API
            uses.
    """
    config: dict[str, Any] = read_yaml(config_file) if config_file else {}
    for key in config:
        if key not in _valid_keys():
            raise ConfigError(f"unknown key {key!r} in {config_file}{_closest(str(key))}")
    if config_file:
        config = _paths_relative_to(config, Path(config_file).parent)
    merged = _merge(DEMO, config)
    for assignment in sets:
        top = assignment.partition("=")[0].split(".")[0]
        if top not in _valid_keys():
            raise ConfigError(f"unknown key {top!r} in --set {assignment!r}{_closest(top)}")
        apply_set(merged, assignment)
    if nodes is not None:
        merged["nodes"] = nodes
    model, data = merged.pop("model"), merged.pop("data")
    return model, data, merged


#: Keys of a run file whose string values are paths (``resume`` unless it is ``"auto"``).
PATH_KEYS = ("data", "validation_data", "runs_dir", "checkpoint_dir", "resume")


def _paths_relative_to(config: dict[str, Any], base: Path) -> dict[str, Any]:
    """A run file's relative paths, read relative to the file's own folder (as a Makefile's
    or a docker-compose file's are), not to wherever the command runs."""
    out = dict(config)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value != "auto" and not Path(value).is_absolute():
            out[key] = str(base / value)
    return out


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; nested spec dicts merge, anything else replaces."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out

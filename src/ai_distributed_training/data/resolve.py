"""Any accepted data input -> a validated :class:`~.types.DataSource`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..config import SyntheticDataSpec, TokenDataSpec, validate
from ..errors import ConfigError, ConfigTypeError
from .files import FILE_SUFFIXES, file_source
from .loading import LoaderOptions
from .streams import StreamSource
from .synthetic import SyntheticSource, SyntheticTokenSource
from .tensors import DatasetSource, loader_source, sliceable, tensors_source, tokens_source
from .types import DataSource, Task

# --- entry point ---------------------------------------------------------------------------------


def resolve_data(
    data: Any,
    task: Task | None = None,
    target: str | int | None = None,
    num_classes: int | None = None,
    collate_fn: Callable[..., Any] | None = None,
) -> DataSource:
    """Turn any accepted data input into a validated :class:`DataSource`.

    Accepted: a synthetic spec dict ``{"samples", "features", "classes", "task", "seed"}``,
    a pair ``(X, y)`` of tensors or NumPy arrays, a map-style ``torch.utils.data.Dataset`` of
    ``(input, target)`` pairs, a path to a ``.npy``/``.npz``/``.pt``/``.csv`` file, or a path to
    a directory of ``.npy`` or ``.parquet`` shards.

    ``task`` ("classification" or "regression") overrides the task inferred from the targets;
    ``target`` picks a ``.csv`` table's target column (header name or index; default: the last);
    ``num_classes`` states a classification Dataset's number of classes (else it is counted from
    its ``targets``, or from a spread sample of its labels); ``collate_fn`` makes a Dataset's
    samples a batch (default ``default_collate``). A ``DataLoader`` gives its dataset and its
    loading options (see :func:`~.tensors.loader_source`).

    Raises:
        ConfigError: a bad value (naming it); ConfigTypeError: an input of a type not accepted.
    """
    if isinstance(data, (str, os.PathLike)):
        return file_source(data, task, target)
    if target is not None:
        raise ConfigError(
            f"target={target!r} chooses the target column of a .csv table file; the data here "
            f"is a {type(data).__name__}, whose targets are already separate"
        )
    if collate_fn is not None and not isinstance(data, (Dataset, IterableDataset, DataLoader)):
        raise ConfigError(
            f"collate_fn makes batches of a Dataset's samples; the data here is a "
            f"{type(data).__name__}, which is batched by slicing"
        )
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return tensors_source(data[0], data[1], description="arrays", task=task)
    source = _source_of(data, task, num_classes, collate_fn)
    # A spec or a dataset states its own targets: a different task setting is a contradiction.
    if task is not None and task != source.info.task:
        raise ConfigError(
            f"task={task!r} conflicts with the data, whose task is "
            f"{source.info.task!r} (set the task in the data spec or dataset)"
        )
    return source


def _source_of(
    data: Any, task: Task | None, num_classes: int | None, collate_fn: Callable[..., Any] | None
) -> DataSource:
    """The source of an in-memory input other than an ``(X, y)`` pair, by its kind."""
    if isinstance(data, Mapping) and "tokens" in data:
        extra = sorted(set(data) - {"tokens", "vocab_size"})
        if extra:
            raise ConfigError(f"unknown key(s) {extra} beside 'tokens'; accepted: 'vocab_size'")
        return tokens_source(data["tokens"], data.get("vocab_size"))
    if isinstance(data, Mapping) and {"seq_len", "vocab_size"} & set(data):
        return SyntheticTokenSource.from_spec(validate(TokenDataSpec, data, "data key"))
    if isinstance(data, Mapping):
        return SyntheticSource.from_spec(validate(SyntheticDataSpec, data, "data key"))
    if isinstance(data, DataLoader):
        return loader_source(data, num_classes, collate_fn)
    if isinstance(data, IterableDataset):
        return StreamSource.from_stream(data, LoaderOptions(collate_fn=collate_fn), num_classes)
    if sliceable(data, collate_fn, num_classes):
        x, y = data.tensors
        return tensors_source(x, y, description="a TensorDataset, sliced as tensors", task=task)
    if isinstance(data, Dataset):
        return DatasetSource.from_dataset(data, num_classes, LoaderOptions(collate_fn=collate_fn))
    raise ConfigTypeError(
        f"data of type {type(data).__name__} is not accepted; pass a synthetic spec dict "
        "{'samples': N, 'features': F}, a pair (X, y) of tensors or arrays, a torch "
        "Dataset or IterableDataset or a DataLoader over one, or a path to a "
        f"{'/'.join(FILE_SUFFIXES)} file or a directory of .npy/.parquet shards"
    )

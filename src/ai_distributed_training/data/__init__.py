"""The data layer: any accepted data input -> a validated, picklable source the workers open.

``types`` (what is known of the data, what a worker reads), ``synthetic`` (generated tables and
token sequences), ``tensors`` (in-memory arrays and datasets), ``files`` (data files),
``streaming`` (tables on disk read row by row), ``resolve`` (the entry point).
"""

from .resolve import resolve_data
from .synthetic import SyntheticSource, make_synthetic
from .tensors import TensorFileSource, TensorSource
from .types import BatchReader, DataInfo, DataSource, Task, example_batch

__all__ = [
    "BatchReader",
    "DataInfo",
    "DataSource",
    "SyntheticSource",
    "Task",
    "TensorFileSource",
    "TensorSource",
    "example_batch",
    "make_synthetic",
    "resolve_data",
]

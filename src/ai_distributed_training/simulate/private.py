"""Every private torch API the simulation stands on, in this one module.

torch can pose as one rank of a huge world in one process: the ``fake`` process-group backend
(from torch's own test utilities) returns every collective at once, ``FakeTensorMode`` runs
the operators on shapes only (no storage: a 7B model's step in a few hundred MB), and the
memory trackers of ``torch.distributed._tools`` sort the tensors alive by what they are for.
None of these is public API; ``tests/unit/test_simulate_private.py`` fails loudly when a torch
upgrade moves one (torch 2.13 here).

FSDP2 splits each parameter into one chunk per rank to keep one; under fake tensors that costs
minutes at 4,096 ranks, so :func:`lazy_fsdp_chunks` has FSDP make its chunks when read.

Collectives are counted by a dispatch mode of our own (:class:`CollectiveCounter`): torch's
``CommDebugMode`` fails inside FSDP2's module hooks (an IndexError in its module tracker's
forward hook) and does not see DDP's all-reduces; a mode over the ``c10d`` operators sees
every collective of DDP, FSDP2 and DTensor, on the fake backend and on gloo alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, overload

import torch
import torch.distributed as dist
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import MemTracker
from torch.testing._internal.distributed.fake_pg import FakeStore
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = [
    "CollectiveCounter",
    "FakeTensorMode",
    "MemTracker",
    "ScalarReads",
    "fake_tensors",
    "join_fake_group",
    "lazy_fsdp_chunks",
    "leave_group",
    "memory_tracker",
    "peak_memory",
]


def join_fake_group(rank: int, world_size: int) -> None:
    """Make this process rank ``rank`` of a world of ``world_size`` on the fake backend.
    (Building a ``FakeProcessGroup`` by hand is silently wrong, pytorch issue 162129: go
    through ``init_process_group``.)"""
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)


def leave_group() -> None:
    """Leave the process group and forget what DTensor cached about its meshes: a mesh of the
    next rank posed as compares equal to this one's (same shape and layout) but has other
    groups, and a cached redistribution plan or sharding would name groups that are gone."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._redistribute import clear_redistribute_planner_cache

    dist.destroy_process_group()
    clear_redistribute_planner_cache()
    propagator = DTensor._op_dispatcher.sharding_propagator
    propagator.propagate_op_sharding.cache_clear()
    propagator._propagate_tensor_meta_cached.cache_clear()
    torch._C._clear_DTensor_sharding_propagator_cache()  # the C++ fast path's own


@contextmanager
def lazy_fsdp_chunks() -> Iterator[None]:
    """FSDP2 splits every parameter into world-size chunks when it shards it, to keep one
    (and the first's size). Under fake tensors each chunk is a Python object made in ~70 us:
    at 4,096 ranks a 7B model's 320 parameters take 1.3 million of them (minutes). Here the
    chunks are made when read, the same views ``torch.chunk`` gives."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param

    original = getattr(_fsdp_param, "_chunk_with_empty")  # noqa: B009 (not exported)
    setattr(_fsdp_param, "_chunk_with_empty", _LazyChunks)  # noqa: B010
    try:
        yield
    finally:
        setattr(_fsdp_param, "_chunk_with_empty", original)  # noqa: B010


class _LazyChunks(Sequence[torch.Tensor]):
    """``torch.chunk(tensor, num_chunks, dim)`` padded with empty tensors to ``num_chunks``
    (FSDP2's ``_chunk_with_empty``), each chunk made when read."""

    def __init__(self, tensor: torch.Tensor, num_chunks: int, dim: int) -> None:
        self.tensor, self.num_chunks, self.dim = tensor, num_chunks, dim
        self.length = tensor.size(dim)
        self.size = -(-self.length // num_chunks)  # torch.chunk's: ceil
        self.real = -(-self.length // self.size) if self.size else 0

    def __len__(self) -> int:
        return self.num_chunks

    @overload
    def __getitem__(self, i: int) -> torch.Tensor: ...
    @overload
    def __getitem__(self, i: slice) -> list[torch.Tensor]: ...
    def __getitem__(self, i: int | slice) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.num_chunks))]
        if i < 0:
            i += self.num_chunks
        if not 0 <= i < self.num_chunks:
            raise IndexError(i)
        if i < self.real:
            start = i * self.size
            return self.tensor.narrow(self.dim, start, min(self.size, self.length - start))
        return self[0].new_empty(0) if self.real else self.tensor.new_empty(0)


def fake_tensors() -> FakeTensorMode:
    """Tensors with shapes and no storage; real tensors (the data) may flow in."""
    return FakeTensorMode(allow_non_fake_inputs=True)


class ScalarReads(TorchDispatchMode):
    """Reading a fake tensor's value (``.item()``, ``float(t)``) gives 1: a fake tensor has
    none, and the step's scalar reads (a clipping norm, a count) only need a number. A real
    tensor's value is read as it is: torch's own checks read sizes (DDP's comparison of the
    ranks' parameters, an object collective's length) and must see the true ones."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default and isinstance(args[0], FakeTensor):
            return 1
        return func(*args, **(kwargs or {}))


@dataclass
class CollectiveCounter(TorchDispatchMode):
    """Counts the collectives run under it: ``(operator, bytes, group size)`` per call. Bytes
    are the message's, as nccl-tests count them: the whole buffer of an all-reduce, the
    gathered output of an all-gather, the input of a reduce-scatter (the larger of the
    operator's first two tensor arguments)."""

    calls: list[tuple[str, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        if func.namespace in ("c10d", "_c10d_functional") and _is_collective(func):
            self.calls.append((_collective_name(func), _message_bytes(args), _group_size(args)))
        return func(*args, **(kwargs or {}))

    def record(self, name: str, nbytes: int, group_size: int) -> None:
        """Count a collective torch ran outside the dispatcher's sight (a DDP comm hook's)."""
        self.calls.append((name, nbytes, group_size))


#: Operators of those namespaces that move no data between ranks.
_NOT_COLLECTIVES = ("wait_tensor", "wrap_tensor_autograd", "monitored_barrier")


def _is_collective(func: Any) -> bool:
    return not any(name in func.__name__ for name in _NOT_COLLECTIVES)


def _collective_name(func: Any) -> str:
    """``all_gather``, ``reduce_scatter``, ``all_reduce``, ``broadcast``, ...: the operator's
    name without torch's variants (``_base_``, ``_into_tensor``, ``_coalesced``)."""
    name = func.__name__.split(".")[0].strip("_")
    for old, new in (
        ("allgather", "all_gather"),
        ("allreduce", "all_reduce"),
        ("reduce_scatter_tensor", "reduce_scatter"),
        ("all_gather_into_tensor", "all_gather"),
    ):
        name = name.replace(old, new)
    for suffix in ("_base", "_coalesced", "_into_tensor"):
        name = name.replace(suffix, "")
    return str(name.strip("_"))


def _nbytes(value: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(value) if _is_tensor(t))


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _message_bytes(args: tuple[Any, ...]) -> int:
    tensor_args = [a for a in args if any(_is_tensor(t) for t in tree_leaves(a))]
    return max((_nbytes(a) for a in tensor_args[:2]), default=0)


def _group_size(args: Iterable[Any]) -> int:
    """The size of the process group a c10d operator runs on (its ProcessGroup argument, or
    a functional collective's group name)."""
    for arg in args:
        if isinstance(arg, dist.ProcessGroup):
            return int(arg.size())
        if isinstance(arg, str):
            try:
                return int(dist.distributed_c10d._resolve_process_group(arg).size())  # type: ignore[attr-defined,arg-type]
            except (RuntimeError, ValueError, KeyError):
                continue
    return dist.get_world_size()


def memory_tracker(models: list[nn.Module], optimizers: list[torch.optim.Optimizer]) -> MemTracker:
    """torch's tracker of this rank's memory by category: FSDP2's own for one sharded model
    (sharded and gathered parameters, all-gather and reduce-scatter buffers), else the
    general one (parameters, buffers, gradients, activations, optimizer state)."""
    from torch.distributed.fsdp import FSDPModule

    if len(models) == 1 and isinstance(models[0], FSDPModule):
        return FSDPMemTracker(models[0], optimizers[0])
    tracker = _CategoryTracker()
    tracker.track_external(*models, *optimizers)
    return tracker


class _CategoryTracker(MemTracker):
    """torch's general tracker, for its categories: a top-level module called again in the
    same step (a loss module, a model a ``train_step`` calls twice) starts its module
    statistics afresh instead of raising (they are not what the simulation reports)."""

    def _pre_fw_hook(self, module: nn.Module, inputs: Any) -> None:
        try:
            super()._pre_fw_hook(module, inputs)
        except NotImplementedError:  # "multiple iterative calls"
            self.memory_tracking.pop(module, None)
            super()._pre_fw_hook(module, inputs)


#: torch's categories under the names the simulation reports.
_CATEGORIES: dict[str, str] = {
    "PARAM": "parameters",
    "SHARDED_PARAM": "parameters",
    "UNSHARDED_PARAM": "gathered parameters",
    "BUFFER": "buffers",
    "GRAD": "gradients",
    "SHARDED_GRAD": "gradients",
    "UNSHARDED_GRAD": "gathered gradients",
    "ACT": "activations",
    "INP": "activations",
    "TEMP": "temporaries",
    "ALL_GATHER": "communication",
    "REDUCE_SCATTER": "communication",
    "OPT": "optimizer state",
}


def peak_memory(tracker: MemTracker) -> dict[str, int]:
    """The tracker's peak (all devices summed): bytes by category at the moment the total
    peaked, and ``total``."""
    out: dict[str, int] = {}
    for per_device in tracker.get_tracker_snapshot("peak").values():
        for kind, nbytes in per_device.items():
            key = "total" if kind == "Total" else _CATEGORIES.get(_kind_name(kind), "other")
            out[key] = out.get(key, 0) + int(nbytes)
    return out


def _kind_name(kind: Any) -> str:
    return str(getattr(kind, "name", kind))


def completed_hook(
    counter: CollectiveCounter,
) -> Callable[[Any, Any], torch.futures.Future[torch.Tensor]]:
    """A DDP comm hook for the fake backend: DDP's C++ reducer asserts on what the fake
    group's all-reduce returns (torch 2.13, comm.cpp:114), so each bucket's all-reduce is
    counted here and its gradients handed back as they are, as a completed future."""

    def hook(state: Any, bucket: Any) -> torch.futures.Future[torch.Tensor]:
        buffer = bucket.buffer()
        counter.record("all_reduce", buffer.numel() * buffer.element_size(), dist.get_world_size())
        future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        future.set_result(buffer)
        return future

    # DDP checks the annotations themselves (objects, not this module's postponed strings).
    hook.__annotations__ = {
        "bucket": dist.GradBucket,  # type: ignore[attr-defined]
        "return": torch.futures.Future[torch.Tensor],
    }
    return hook

"""Sharded from birth: give a model built on the meta device and sharded by FSDP storage for
this rank's shards only, then initialise them, the same for any number of ranks.

Each module is initialised on its own, with its own initialisers (see
:func:`..models.meta.initialisers`), into full-size tensors of that module's parameters only,
from a generator seeded by the job's draw and the module's name; each rank then keeps its slice.
So the initial weights are a function of the seed alone (equal at 1, 2 or 4 ranks), and no rank
ever holds more than one module's full parameters beside its shards. Children are initialised
before their parent, as their constructors ran (a parent such as ``nn.MultiheadAttention``
may re-initialise its child's parameters).
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from ...models.meta import initialisers, reset_method, tied_aliases


def materialize(
    model: nn.Module, device: torch.device, seed: int, *, buffer_device: torch.device | None = None
) -> str | None:
    """Allocate this rank's shards of ``model`` (FSDP-sharded, parameters on meta) on ``device``
    and initialise them module by module; buffers keep the values they were built with, on
    ``buffer_device`` (default ``device``; the GPU when the shards are offloaded to the host).
    Returns the name of a parameter no initialiser wrote (the model's ``_init_weights`` skips
    it): then the weights are not the model's and the caller must supply them; else None."""
    allocate_shards(model, device, buffer_device=buffer_device)
    missed: list[str] = []
    with torch.no_grad():
        for unit in _units(model):
            missed += _init_together(model, unit, seed, device)
    return missed[0] if missed else None


def _units(model: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """The modules initialised together, each unit in construction order (children before
    parents), the units in that order too. A module with a ``reset_parameters`` of its own
    and parameters below it may write them (a block re-initialising its layers): it and its
    whole subtree are one unit, initialised on full-size tensors together; every other module
    with parameters is a unit of its own."""
    units: list[list[tuple[str, nn.Module]]] = []
    for name, module in reversed(list(model.named_modules())):  # children first
        below = [(n, m) for n, m in module.named_modules(prefix=name) if m is not module]
        if reset_method(module) is not None and any(_own(m) for _, m in below):
            inside = {id(m) for _, m in below}  # their units so far join this one
            units = [u for u in units if not any(id(m) in inside for _, m in u)]
            units.append([*reversed(below), (name, module)])
        elif _own(module):
            units.append([(name, module)])
    return units


def _own(module: nn.Module) -> dict[str, nn.Parameter]:
    """``module``'s own parameters (not its children's), by name."""
    return dict(module.named_parameters(recurse=False))


def allocate_shards(
    model: nn.Module, device: torch.device, *, buffer_device: torch.device | None = None
) -> None:
    """Storage on ``device`` for this rank's shards of ``model`` (FSDP-sharded, parameters on
    meta), their values unset; tied parameters stay tied and buffers keep their values (on
    ``buffer_device``, default ``device``): ``to_empty`` alone would lose both."""
    buffers = dict(model.named_buffers())  # the built values, kept alive here
    ties = tied_aliases(model)
    model.to_empty(device=device)
    for alias, original in ties.items():  # to_empty makes a tied parameter two
        _set(model, alias, model.get_parameter(original))
    for name, value in buffers.items():
        _set_buffer(model, name, value.to(buffer_device or device))


def _init_together(
    root: nn.Module, unit: list[tuple[str, nn.Module]], seed: int, device: torch.device
) -> list[str]:
    """Run each of ``unit``'s modules' initialisers (in order, each seeded by its name) on
    full-size parameters of the unit's own, then copy each rank's slice of them into its
    shards; the names of those left unwritten (still NaN)."""
    full = {(name, p): _unwritten(param) for name, m in unit for p, param in _own(m).items()}
    with contextlib.ExitStack() as swaps:
        for name, module in unit:
            mine = {p: t for (n, p), t in full.items() if n == name}
            swaps.enter_context(_swapped(module, mine))
        for name, module in unit:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed(seed, name))
                for init in initialisers(root, module):
                    init()
    for name, module in unit:
        for p, param in _own(module).items():
            value = full[(name, p)].to(device)
            if isinstance(param, DTensor):  # every rank computed the same full value: slice it
                param.to_local().copy_(_local_slice(value, param))
            else:
                param.copy_(value)
    left = [(n, p) for (n, p), t in full.items() if t.is_floating_point() and t.isnan().any()]
    return [f"{n}.{p}" if n else p for n, p in left]


def _local_slice(value: torch.Tensor, param: DTensor) -> torch.Tensor:
    """This rank's part of ``value``, the full tensor of ``param``. FSDP's layout (one mesh
    dimension, ``Shard(d)``: ``ceil(size / n)`` rows each, the last ranks' fewer or none) is
    sliced directly; any other by ``distribute_tensor``, which splits the tensor into every
    rank's chunk to keep one (thousands of them in a simulated world)."""
    mesh, placements = param.device_mesh, param.placements
    if mesh.ndim == 1 and type(placements[0]) is Shard:
        dim, size = placements[0].dim, value.shape[placements[0].dim]
        chunk = -(-size // mesh.size())
        start = min(mesh.get_local_rank() * chunk, size)
        return value.narrow(dim, start, param.to_local().shape[dim])
    return distribute_tensor(value, mesh, placements, src_data_rank=None).to_local()


def _unwritten(param: nn.Parameter) -> torch.Tensor:
    """A full-size tensor for ``param``, NaN where floating point (to see what init skips)."""
    fill = math.nan if param.dtype.is_floating_point else 0
    return torch.full(param.shape, fill, dtype=param.dtype)


def _set_buffer(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Make ``value`` the buffer at dotted ``name``."""
    owner, _, leaf = name.rpartition(".")
    model.get_submodule(owner)._buffers[leaf] = value


def _set(model: nn.Module, name: str, param: nn.Parameter) -> None:
    """Make ``param`` the parameter at dotted ``name``."""
    owner, _, leaf = name.rpartition(".")
    model.get_submodule(owner)._parameters[leaf] = param


@contextlib.contextmanager
def _swapped(module: nn.Module, full: dict[str, torch.Tensor]) -> Iterator[None]:
    """Within: ``module``'s own parameters are the plain tensors ``full`` (as parameters)."""
    saved = dict(module._parameters)
    for name, tensor in full.items():
        trains = bool(getattr(saved[name], "requires_grad", True))
        module._parameters[name] = nn.Parameter(tensor, requires_grad=trains)
    try:
        yield
    finally:
        for name, param in saved.items():
            module._parameters[name] = param


def _seed(seed: int, name: str) -> int:
    """A module's seed: the job's draw and the module's name (stable across processes)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)

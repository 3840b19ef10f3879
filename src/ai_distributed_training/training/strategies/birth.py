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
from torch.distributed.tensor import DTensor, distribute_tensor

from ...models.meta import initialisers, tied_aliases


def materialize(
    model: nn.Module, device: torch.device, seed: int, *, buffer_device: torch.device | None = None
) -> str | None:
    """Allocate this rank's shards of ``model`` (FSDP-sharded, parameters on meta) on ``device``
    and initialise them module by module; buffers keep the values they were built with, on
    ``buffer_device`` (default ``device``; the GPU when the shards are offloaded to the host).
    Returns the name of a parameter no initialiser wrote (the model's ``_init_weights`` skips
    it): then the weights are not the model's and the caller must supply them; else None."""
    allocate_shards(model, device, buffer_device=buffer_device)
    with torch.no_grad():
        missed: list[str] = []
        for name, module in reversed(list(model.named_modules())):
            own = dict(module.named_parameters(recurse=False))
            if own:
                left = _init_module(model, module, own, _seed(seed, name), device)
                missed += [f"{name}.{p}" if name else p for p in left]
    return missed[0] if missed else None


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


def _init_module(
    root: nn.Module,
    module: nn.Module,
    own: dict[str, nn.Parameter],
    seed: int,
    device: torch.device,
) -> list[str]:
    """Run ``module``'s initialisers on full-size parameters of its own, then copy each rank's
    slice of them into its shards; the names of those they left unwritten (still NaN)."""
    full = {name: _unwritten(p) for name, p in own.items()}
    with _swapped(module, full), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for init in initialisers(root, module):
            init()
    for name, param in own.items():
        value = full[name].to(device)
        if isinstance(param, DTensor):  # slice locally: every rank computed the same full value
            value = distribute_tensor(
                value, param.device_mesh, param.placements, src_data_rank=None
            )
        param.copy_(value)
    return [name for name, t in full.items() if t.is_floating_point() and t.isnan().any()]


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

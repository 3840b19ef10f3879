"""Build a model with its parameters on the meta device (no memory) and its buffers real, and
find out whether its initial weights can be recreated module by module afterwards.

Why: a model bigger than one worker cannot be built whole on any rank. FSDP builds it empty,
shards it, allocates only each rank's shards and then initialises them
(:mod:`..training.strategies.birth`), module by module, with each module's own initialiser:
``reset_parameters()`` (torch's layers), then the model's ``_init_weights(module)`` if it has one
(Hugging Face's convention, and nanoGPT's). That recreates the constructor's weights only if the
constructor wrote no others, so the build watches for what module-by-module init cannot redo:

* an in-place write to a parameter outside those initialisers (``nn.init.zeros_(self.head.weight)``
  in ``__init__``, a ``load_state_dict`` in a factory);
* a parameter registered while loading (``from_pretrained``, ``load_state_dict``): its values
  came from a file;
* a parameter of a module that has no initialiser at all (``nn.Parameter(torch.ones(d))`` in a
  custom module): its values are the constructor's;
* a parameter placed without ``register_parameter`` (so not moved to meta).

Buffers stay real because they are small and often computed in ``__init__`` (rotary
frequencies, position ids), which no initialiser redoes. (Accelerate's
``init_empty_weights(include_buffers=False)`` is the same idea; it is not a dependency here.)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

#: Functions whose in-place writes to parameters module-by-module init repeats.
INITIALISERS = frozenset({"reset_parameters", "_reset_parameters", "_init_weights"})
#: Functions that load values into parameters (which module-by-module init cannot repeat).
LOADERS = frozenset({"from_pretrained", "load_state_dict", "_load_from_state_dict", "load"})
#: In-place methods that change no values.
_NOT_WRITES = frozenset({"requires_grad_", "share_memory_", "retain_grad"})


@dataclass(frozen=True)
class MetaBuild:
    """A model built with meta parameters; ``why_not`` says why module-by-module init would
    not recreate its weights (``None``: it would; then ``model`` is set)."""

    model: nn.Module | None
    why_not: str | None


def reset_method(module: nn.Module) -> Callable[[], Any] | None:
    """``module``'s own reset method (torch's convention: ``reset_parameters``, or
    ``_reset_parameters`` as ``nn.MultiheadAttention`` names it), or None."""
    found = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
    return found if callable(found) else None


def initialisers(root: nn.Module, module: nn.Module) -> list[Callable[[], Any]]:
    """What initialises ``module``'s own parameters, in the order its construction ran them:
    its ``reset_parameters`` (or ``_reset_parameters``), then ``root._init_weights(module)``."""
    found: list[Callable[[], Any]] = []
    own = reset_method(module)
    if own is not None:
        found.append(own)
    model_init = getattr(root, "_init_weights", None)
    if callable(model_init):
        found.append(lambda: model_init(module))
    return found


def build_on_meta(build: Callable[[], nn.Module]) -> MetaBuild:
    """``build()`` with every parameter registered on the meta device (buffers real), and the
    verdict on recreating its weights module by module."""
    watch = _Watch()
    try:
        with _parameters_on_meta(watch), watch:
            model = build()
    except Exception as err:  # code that needs real parameters (an .item(), a Keras layer)
        return MetaBuild(model=None, why_not=f"it cannot be built on the meta device ({err!r})")
    why_not = watch.why_not or _uninitialised(model)
    return MetaBuild(model=model, why_not=why_not)


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """Each tied parameter's other names -> its first name (e.g. an output head that is the
    input embedding, as Hugging Face ties them)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        first.setdefault(id(param), name)
    return aliases


def _uninitialised(model: nn.Module) -> str | None:
    """The first parameter not on meta, or whose module has no initialiser; else None."""
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(prefix=name, recurse=False):
            if not param.is_meta:
                return f"parameter {pname!r} was set without register_parameter"
            if not initialisers(model, module):
                return (
                    f"{type(module).__name__} ({name or 'the model'}) has parameter {pname!r} but "
                    "no reset_parameters() to initialise it (nor a _init_weights(module) "
                    "on the model)"
                )
    return None


def _inside(names: frozenset[str]) -> str | None:
    """The innermost caller frame whose function is one of ``names``, by name; else None."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name in names:
            return frame.f_code.co_name
        frame = frame.f_back  # type: ignore[assignment]
    return None


class _Watch(TorchFunctionMode):
    """Notes the first in-place write to a meta tensor (a parameter, during this build) made
    outside an initialiser, and the first parameter registered while loading."""

    def __init__(self) -> None:
        super().__init__()
        self.why_not: str | None = None

    def note(self, why: str) -> None:
        self.why_not = self.why_not or why

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        name = getattr(func, "__name__", "")
        target = args[0] if args else None
        in_place = name.endswith("_") and not name.startswith("__")
        writes = (in_place or name == "__setitem__") and name not in _NOT_WRITES
        on_meta = isinstance(target, torch.Tensor) and target.is_meta
        if writes and on_meta and _inside(INITIALISERS) is None:
            self.note(
                "the model's construction writes a parameter in place outside its "
                f"reset_parameters() or the model's _init_weights(module) ({name})"
            )
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _parameters_on_meta(watch: _Watch) -> Iterator[None]:
    """Within: ``Module.register_parameter`` puts each new parameter on the meta device (a
    parameter already there, e.g. a tied one, is kept as it is, so ties survive)."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            loader = _inside(LOADERS)
            if loader is not None:
                watch.note(f"parameter {name!r} is loaded during construction ({loader})")
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]

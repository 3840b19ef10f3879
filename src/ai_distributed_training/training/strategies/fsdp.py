"""Sharded data parallelism on FSDP2 (``torch.distributed.fsdp.fully_shard``).

Each rank keeps 1/world_size of every parameter, gradient and optimizer state; a block's full
weights are all-gathered just before its forward (and backward) and freed after, and gradients
are reduce-scattered (averaged, as DDP does, so the loop's loss scaling is the same). So a
model whose gradients and optimizer state (with its weights) do not fit one worker trains across
several.

Sharded from birth: a model from a spec, a factory or a class (a Hugging Face config too) is
built on the meta device on every rank, and only this rank's shards are allocated and
initialised, module by module (:mod:`.birth`), the same for any number of ranks; no rank holds
the whole model. A model whose construction writes weights that module-by-module init cannot
recreate (:mod:`...models.meta` names what) is built whole on rank 0 and broadcast into the
shards. A user's module instance is whole already: each worker received the same one and
shards it in place (in a torchrun-joined script, a copy of the caller's, with rank 0's
weights). At the end the weights are gathered once, or exported shard by shard.

Which modules are "blocks" (sharded and gathered one at a time): those whose class name is in
``fsdp_blocks``; the built-in architectures name theirs (each ``Linear`` of an MLP, each
``DecoderBlock`` of the transformer). The root module is sharded last and holds the rest.

Checkpoints go through ``torch.distributed.checkpoint`` (see :mod:`.checkpoint`): every rank
writes its own shards, and a job with another number of ranks loads them resharded.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    fully_shard,
)
from torch.distributed.tensor import DTensor

from ...data import DataInfo
from ...models import Models, ModelSource, on_meta_device
from ...models.meta import build_on_meta
from ..checkpoint import checkpoint_path, commit_sharded
from .base import local_gradients_finite, local_part, written_by
from .birth import allocate_shards, materialize
from .ddp import DDPStrategy

log = logging.getLogger("ai_distributed_training.fsdp")


class FSDPStrategy(DDPStrategy):
    """Parameters, gradients and optimizer state sharded over the ranks (FSDP2).

    ``param_dtype``: the dtype blocks compute in (bf16 on GPUs), with gradients reduced in
    fp32; ``None`` keeps everything in the parameters' dtype (fp32 on CPU).
    The collective helpers (all_reduce, all_gather, ...) are DDP's: the same process group.
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        device: torch.device,
        blocks: Sequence[str],
        param_dtype: torch.dtype | None = None,
        *,
        compile_backend: str | None = None,
        cpu_offload: bool = False,
        in_callers_process: bool = False,
        mesh: DeviceMesh | None = None,
    ) -> None:
        super().__init__(rank, world_size, device, compile_backend=compile_backend)
        #: What checkpoints record as their strategy (a resume must use the same).
        self.name = "fsdp"
        self.blocks = set(blocks)
        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        self.options: dict[str, Any] = {"mp_policy": policy} if param_dtype else {}
        self._mesh = mesh
        #: Whether the initial weights must be the job's. A simulation says no: its values are
        #: meaningless, and rank 0's broadcast of them cannot be posed as another rank.
        self.initial_values = True
        if cpu_offload:  # shards, gradients and optimizer state in (pinned) host memory
            self.options["offload_policy"] = CPUOffloadPolicy()
        #: Where the sharded parameters live: host memory when offloaded, else the device.
        self.shard_device = torch.device("cpu") if cpu_offload else device
        #: A module instance is the caller's own here (a torchrun-joined script): copy it, and
        #: take rank 0's weights (each process built its own). Else every rank unpickled the
        #: same bytes: each shards its instance in place, no copy, no broadcast.
        self.in_callers_process = in_callers_process
        self.same_on_every_rank: set[nn.Module] = set()
        #: Models built on the meta device to be initialised in wrap(): their seeds, and how to
        #: build them whole should module-by-module init leave a parameter unwritten.
        self.born_sharded: dict[nn.Module, tuple[int, Callable[[], nn.Module]]] = {}

    @property
    def shard_mesh(self) -> DeviceMesh:
        """The ranks FSDP shards over: ``mesh`` as given (tensor parallelism's data-parallel
        groups), else all of them (FSDP's own default), made on first use, which needs the
        process group. A simulation asks for it before it builds models under fake tensors,
        where it cannot be made."""
        if self._mesh is None:
            self._mesh = init_device_mesh(self.device.type, (self.world_size,))
        return self._mesh

    def build_model(self, source: ModelSource, info: DataInfo) -> nn.Module:
        """Sharded from birth where the model allows: built on the meta device on every rank,
        and :meth:`wrap` allocates and initialises only this rank's shards. A model whose
        construction writes weights module-by-module init cannot recreate (see
        :mod:`...models.meta`) is built for real on rank 0 only and broadcast into the shards;
        a user's module instance is whole already and is sharded from there."""
        if source.module is not None:
            if self.in_callers_process:
                # fully_shard converts a module in place (its class too): the caller's own is
                # copied, and gets the trained weights loaded back into it.
                return copy.deepcopy(source.module)
            self.same_on_every_rank.add(source.module)
            return source.module
        if source.parts is not None:
            return Models(
                {name: self.build_model(part, info) for name, part in source.parts.items()}
            )
        return self._build_sharded(source, info)

    def _build_sharded(self, source: ModelSource, info: DataInfo) -> nn.Module:
        """The model on the meta device, to be materialized in :meth:`wrap`; or, where that
        would not recreate its weights, built whole on rank 0 (meta elsewhere, if it can be)."""
        seeded = torch.get_rng_state()  # a whole build sees the generator as a plain one would

        def build_whole() -> nn.Module:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(seeded)
                return source.build(info)

        built = build_on_meta(lambda: source.build(info))
        # Drawn on every rank from the same seeded generator, so it is the same everywhere.
        seed = int(torch.randint(0, 2**62, ()))
        if built.model is not None and built.why_not is None:
            self.born_sharded[built.model] = (seed, build_whole)
            return built.model
        if self.rank == 0:
            log.info(
                "the model is built whole on rank 0, not sharded from birth: %s", built.why_not
            )
        if self.rank == 0 or built.model is None:  # the others' weights come from rank 0
            return build_whole()
        return built.model

    def wrap(self, model: nn.Module) -> nn.Module:
        birth = self.born_sharded.pop(model, None)
        on_meta = on_meta_device(model)
        if not on_meta:
            model = model.to(self.device)
        if model in self.same_on_every_rank or not self.initial_values:
            self.same_on_every_rank.discard(model)  # each rank keeps its slice of its own copy
            self._shard(model)
            if on_meta:
                allocate_shards(model, self.shard_device, buffer_device=self.device)
            return model
        # Rank 0's full weights, kept until they are broadcast into everyone's shards.
        initial = model.state_dict() if self.rank == 0 and birth is None else {}
        self._shard(model)
        if birth is not None:
            seed, build_whole = birth
            # This rank's shards, initialised (on the host when offloaded; buffers on the device).
            missed = materialize(model, self.shard_device, seed, buffer_device=self.device)
            if missed is None:
                return model
            # The same on every rank (same seeds): all of them take rank 0's whole build.
            if self.rank == 0:
                log.info("the model is built whole on rank 0: no initialiser wrote %r", missed)
                initial = build_whole().state_dict()
        elif on_meta:  # storage for this rank's shards only; rank 0's weights fill them
            allocate_shards(model, self.shard_device, buffer_device=self.device)
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, initial, options=options)
        return model  # FSDP2 shards in place: the module is still the user's class

    def _shard(self, model: nn.Module) -> None:
        """``fully_shard`` each block, innermost first (a block's parameters leave the root's
        group once it is sharded), then the root, which holds the rest."""
        # FSDP2 warns whenever a module returns a view (e.g. a Linear's 3-D output), in case the
        # caller modifies it in place; the loop never does.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view")
        blocks = [
            m
            for m in reversed(list(model.modules()))
            if m is not model and type(m).__name__ in self.blocks
        ]
        # With compile, each block is compiled on its own (as torchtitan does: FSDP's
        # all-gathers stay between the compiled blocks); a model without blocks, whole.
        for module in blocks:
            fully_shard(self.compiled(module), mesh=self.shard_mesh, **self.options)
        fully_shard(model if blocks else self.compiled(model), mesh=self.shard_mesh, **self.options)

    def unwrap(self, wrapped: nn.Module) -> nn.Module:
        return wrapped

    def settle(self, wrapped: nn.Module, backward: Callable[[], None]) -> None:
        pass  # FSDP reduce-scatters each block's gradients in a fixed layout from the start

    def no_sync(self, wrapped: nn.Module) -> contextlib.AbstractContextManager[Any]:
        return _without_gradient_sync(wrapped)

    def gradients_finite(self, wrapped: nn.Module) -> bool:
        # Each rank holds a different shard of the gradients: agree on the answer.
        grads = [local_part(p.grad) for p in wrapped.parameters() if p.grad is not None]
        finite = torch.tensor([float(local_gradients_finite(grads))], device=self.device)
        return bool(self.all_reduce(finite, dist.ReduceOp.MIN).item())

    def clip_grad_norm(self, wrapped: nn.Module, max_norm: float) -> float:
        norm = nn.utils.clip_grad_norm_(wrapped.parameters(), max_norm)
        return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)  # global norm

    def full_state_dict(self, wrapped: nn.Module) -> dict[str, torch.Tensor]:
        full = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True))
        return {k: v.detach().cpu() for k, v in full.items() if isinstance(v, torch.Tensor)}

    def save_checkpoint(
        self,
        directory: Path,
        step: int,
        stateful: Mapping[str, Any],
        meta: dict[str, Any],
        writes: bool,
        keep: int,
    ) -> Path | None:
        path = checkpoint_path(directory, step, sharded=True)
        if writes and path.exists():  # this step saved by an earlier attempt: uncommit it first,
            shutil.rmtree(path)  # so a crash mid-save cannot leave old marker over new shards
        dist.barrier()
        optimizers = _optimizers(stateful["optimizer"])
        model_state, optim_state = get_state_dict(stateful["model"], optimizers)
        dcp_save({"model": model_state, "optimizer": optim_state}, checkpoint_id=path)
        dist.barrier()  # every rank's shards are on disk before the commit marker
        if not writes:
            return None
        rest = {k: obj.state_dict() for k, obj in stateful.items() if k not in _SHARDED}
        return commit_sharded(path, {**rest, **meta, "strategy": self.name}, keep)

    def load_checkpoint(self, resume: Mapping[str, Any], stateful: Mapping[str, Any]) -> None:
        written_by(resume, self.name)
        model, optimizer = stateful["model"], _optimizers(stateful["optimizer"])
        model_state, optim_state = get_state_dict(model, optimizer)
        # Loaded in place into this job's shards: resharded to however many ranks there are.
        dcp_load({"model": model_state, "optimizer": optim_state}, checkpoint_id=resume["dcp_dir"])
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
        for name, obj in stateful.items():
            if name not in _SHARDED:
                obj.load_state_dict(resume[name])


_SHARDED = ("model", "optimizer")


def _optimizers(optimizer: Any) -> Any:
    """One optimizer, or a train_step's several (an OptimizerGroup) as DCP takes them."""
    group = getattr(optimizer, "optimizers", None)
    return list(group.values()) if isinstance(group, dict) else optimizer


@contextlib.contextmanager
def _without_gradient_sync(model: nn.Module) -> Iterator[None]:
    """FSDP2's ``no_sync``: gradients accumulate unreduced until the last micro-batch."""
    assert isinstance(model, FSDPModule)
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)

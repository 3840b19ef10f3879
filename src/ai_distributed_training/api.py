"""The public facade: ``DistributedTraining``, ``GPUAcceleratedTraining`` and their ``plan``.

Subclass :class:`DistributedTraining` and override :meth:`~DistributedTraining.train_distributed`
(calling ``super().train_distributed(...)``) to change defaults or post-process results;
:class:`GPUAcceleratedTraining` is such a subclass.

A call reads top to bottom: where am I (:mod:`.topology`), check everything (:mod:`.prepare`),
launch or join and collect the result (:mod:`.run`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import TrainingSettings, validate
from .config.sections import sections_of
from .data import DataSource, SyntheticSource, resolve_data
from .errors import ConfigError, TrainingInterrupted, warn_user
from .host import terminating_signals_raise
from .models import resolve_model
from .planner import HardwareProfile, Plan, make_plan, resolve_profile
from .planner.plan import node_counts, with_simulated_memory
from .prepare import prepare
from .result import TrainingResult
from .run import run
from .topology import detect_environment

if TYPE_CHECKING:  # the simulation loads torch's fake tensors and trackers: only when used
    from .simulate import Simulation


class DistributedTraining:
    """Train a PyTorch model data-parallel across ``nodes`` worker processes.

    Keyword arguments given here are defaults for every call; ``train_distributed`` overrides
    them. Every setting is listed in :class:`~.config.TrainingSettings`; an unknown one raises
    :class:`~.errors.ConfigError` naming it.
    """

    def __init__(self, **settings: Any) -> None:
        validate(TrainingSettings, settings, "setting")  # fail here, not at the first call
        self.defaults: dict[str, Any] = dict(settings)

    def resolve_settings(self, **overrides: Any) -> TrainingSettings:
        """This object's defaults with ``overrides`` applied, validated."""
        return validate(TrainingSettings, {**self.defaults, **overrides}, "setting")

    def train_distributed(
        self, model: Any, data: Any, nodes: int | None = None, **settings: Any
    ) -> TrainingResult:
        """Train ``model`` on ``data`` across ``nodes`` workers and return a result dict.

        ``model``: a spec dict ``{"model_name": ..., "architecture": "mlp" | "linear", ...}``,
        an ``nn.Module`` (trained in place) or a zero-argument factory. ``data``: a synthetic spec
        dict ``{"samples": N, "features": F, ...}``, a pair ``(X, y)`` of tensors or arrays, a
        map-style ``Dataset`` or a ``.npy``/``.npz``/``.pt``/``.csv`` path.

        Raises:
            ConfigError / ConfigTypeError: bad input, before any worker starts.
            WorkerFailedError: a worker failed; it names the rank, the error and its traceback.
            TrainingInterrupted: SIGTERM, SIGHUP or SIGQUIT (a ``SystemExit``); KeyboardInterrupt:
                Ctrl-C. Either way every worker has stopped and temporary files are gone.
        """
        with terminating_signals_raise(TrainingInterrupted):
            return self._train(model, data, nodes, settings)

    def _train(
        self, model: Any, data: Any, nodes: int | None, settings: dict[str, Any]
    ) -> TrainingResult:
        started = time.perf_counter()
        if nodes is not None:
            settings["nodes"] = nodes
        environment = detect_environment()
        if "nnodes" not in {**self.defaults, **settings}:
            settings = {**environment.settings, **settings}  # Slurm: one launcher per host
        joined = environment.joined
        if joined is not None:  # already a rank of a launched job: join it, start nothing
            if settings.get("nodes", joined.world_size) != joined.world_size:
                warn_user(
                    f"nodes={settings['nodes']} ignored: this process is rank {joined.rank} "
                    f"of a torchrun job of {joined.world_size} workers"
                )
            settings["nodes"] = joined.world_size
        prepared = prepare(model, data, self.resolve_settings(**settings), joined)
        inputs = {
            "model": _describe(model, prepared.model.spec),
            "data": _describe(data, _synthetic_spec(prepared.data)),
        }
        return run(prepared, started=started, inputs=inputs)

    def plan(
        self,
        model: Any,
        data: Any,
        nodes: int | Sequence[int] | None = None,
        hardware: str | Path | HardwareProfile | None = None,
        calibrate: bool = False,
        threshold: float = 0.8,
        simulate: bool = False,
        **settings: Any,
    ) -> Plan:
        """Predict memory per worker, step time, samples/s and scaling efficiency for node
        counts 1, 2, 4, ..., 1024 (plus ``nodes`` if an int; exactly ``nodes`` if a list, with
        1 added as the baseline), and recommend a strategy and node count. Trains nothing.

        ``hardware``: ``None``/``"this-machine"`` (this machine's saved calibration, measured
        on first use or when ``calibrate=True``), a preset name (see
        :data:`~.planner.PRESETS`), a profile YAML path, or a :class:`HardwareProfile`.
        ``threshold``: the scaling efficiency under which more nodes are not recommended.
        ``simulate``: the DDP and FSDP memory per worker of each node count from a simulation
        of the job's real step at that size (:meth:`simulate`, slower: seconds per size for a
        small model) instead of the formulas; a size the job refuses keeps the formulas'.

        Raises:
            ConfigError: bad settings, node counts, threshold or hardware; before any probe.
        """
        counts = node_counts(nodes)
        if not 0 < threshold <= 1:
            raise ConfigError(f"threshold={threshold!r} must be in (0, 1]")
        resolved = self.resolve_settings(**settings)
        model_source = resolve_model(model)
        data_source = resolve_data(
            data, resolved.task, resolved.target, resolved.num_classes, resolved.collate_fn
        )
        profile = resolve_profile(hardware, calibrate)
        sections = sections_of(resolved)
        plan = make_plan(model_source, data_source, sections, profile, counts, threshold)
        if not simulate:
            return plan
        by_strategy = [
            self.simulate(model, data, counts, profile, **{**settings, "strategy": strategy})
            for strategy in ("ddp", "fsdp")
        ]
        ddp, fsdp = (sim.needed_bytes() for sim in by_strategy)
        return with_simulated_memory(plan, ddp, fsdp, threshold)

    def simulate(
        self,
        model: Any,
        data: Any,
        nodes: int | Sequence[int] = 4096,
        hardware: str | Path | HardwareProfile | None = None,
        ranks: Sequence[int] | None = None,
        steps: int = 2,
        fake_tensors: bool | None = None,
        **settings: Any,
    ) -> Simulation:
        """Run this job's real step as chosen ranks of a world of ``nodes`` workers (or of
        each world size in a list), in processes on this host posing as those ranks on
        torch's fake process group: memory by category, collectives and their bytes, data
        share and checkpoint bytes per rank, a step time predicted for ``hardware``, and what
        would fail at that size (a rank without data or parameters, out of memory). Trains
        nothing; the weights are meaningless.

        ``ranks``: default the first, the last and those with the smallest and largest data
        share. ``fake_tensors``: run on shapes only (no memory for the weights); default for a
        model above 1 GiB of weights. ``hardware``: as for :meth:`plan`.

        Raises:
            ConfigError: bad settings, node counts, ranks or hardware; every size refused.
            SimulationError: the simulation's own process failed.
        """
        from .simulate import simulate as simulate_job

        counts = [nodes] if isinstance(nodes, int) else list(nodes)
        resolved = self.resolve_settings(**settings)
        profile = resolve_profile(hardware, recalibrate=False)
        return simulate_job(
            model,
            data,
            resolved,
            nodes=counts,
            hardware=profile,
            ranks=ranks,
            steps=steps,
            fake_tensors=fake_tensors,
        )


class GPUAcceleratedTraining(DistributedTraining):
    """:class:`DistributedTraining` on GPUs by default: NCCL, one worker per GPU, bf16 autocast
    where the GPU supports it. Results say ``device="GPUs"`` and
    ``status="distributed_trained_with_acceleration"``."""

    def train_distributed(
        self,
        model: Any,
        data: Any,
        nodes: int | None = None,
        use_gpus: bool = True,
        **settings: Any,
    ) -> TrainingResult:
        return super().train_distributed(model, data, nodes=nodes, use_gpus=use_gpus, **settings)


def _synthetic_spec(source: DataSource) -> Any:
    return source.spec if isinstance(source, SyntheticSource) else None


def _describe(value: Any, spec: Any) -> Any:
    """How a model or data input appears in config.yaml: a spec, a path, or a description."""
    if spec is not None:
        return spec.model_dump()
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    return f"<{type(value).__name__}>"

"""Check the model, the data and the settings against each other, before anything starts.

:func:`prepare` turns the caller's inputs into one frozen
:class:`~..training.job.ResolvedJob`: the model and data sources, the typed sections (each
checked on its own when built from the settings), the topology, the threads per worker, the
resume plan and the strategy ``auto`` resolved. Every problem is a
:class:`~..errors.ConfigError` naming the bad value and what is accepted. The checks live
beside it: what the inputs decide of the settings (:mod:`.inputs`), the model against the data
(:mod:`.model_checks`), the workers against the host (:mod:`.placement`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import TrainingSettings, settings_as_plain_data
from ..config.sections import ResumePlan, Sections, sections_of
from ..data import DataSource, resolve_data
from ..errors import ConfigError
from ..models import ModelSource, check_fits_data, resolve_model
from ..planner import HardwareProfile, choose_strategy
from ..rundir import runs_of
from ..topology import RankEnv, Topology
from ..training.identity import fingerprint as run_fingerprint
from ..training.job import ResolvedJob
from ..training.resume import plan_resume
from ..training.tracking import caller_log_level
from .inputs import (
    adopt_loader_batch,
    check_custom_step,
    check_sizes,
    check_stream,
    resolve_validation,
)
from .model_checks import (
    check_batchnorm,
    check_fits_host,
    check_on_two_samples,
    check_structure,
    weight_files,
)
from .placement import (
    MAX_WORKERS_PER_CORE,
    check_placement,
    check_tools,
    check_workers,
    resolve_trackers,
    worker_memory_budget,
)

__all__ = ["MAX_WORKERS_PER_CORE", "prepare"]


def prepare(
    model: Any,
    data: Any,
    settings: TrainingSettings,
    joined: RankEnv | None = None,
    *,
    cluster: HardwareProfile | None = None,
) -> ResolvedJob:
    """Check ``model``, ``data`` and their fit with ``settings``; start nothing. ``joined``:
    this process is a rank of a job someone else launched (torchrun, srun). ``cluster``: the
    job is for that hardware, not this host (a simulation): the checks of this host's cores,
    GPUs and memory are left out, and ``auto`` picks a strategy for the cluster's workers.

    ``settings`` are the caller's; what the inputs decide of them (a DataLoader's batch size,
    no held-out split for a custom step or a stream, the strategy of the checkpoint resumed or
    the one ``auto`` picks) is collected in one place, ``resolved``, and applied once.

    Raises:
        ConfigError / ConfigTypeError: naming the bad value and what is accepted.
    """
    model_source, data_source, resolved, sections = _inputs(model, data, settings)
    validation = resolve_validation(sections, data_source.info)
    # The fraction held out for validation: none beside validation_data, a train_step, a stream.
    held_out = (
        0.0 if validation else resolved.get("validation_split", sections.loop.validation_split)
    )
    check_sizes(sections, data_source.info, held_out)
    topology = Topology.of(sections.launch, joined)
    threads = check_placement(sections, topology) if cluster is None else 1
    check_workers(sections, topology)
    skeleton = model_source.skeleton(data_source.info)  # built once for the checks below
    resolved |= check_structure(sections, skeleton, model_source, topology)
    if cluster is None:
        check_fits_host(skeleton, model_source.name, data_source, sections, topology)
    notes: list[str] = []
    data_source, facts = check_on_two_samples(model_source, skeleton, data_source, sections, notes)
    world = topology.world_size
    check_batchnorm(skeleton, data_source.info, sections, world, held_out, facts)
    check_tools(sections)
    resolved |= resolve_trackers(sections.tracking)
    fingerprint = run_fingerprint(skeleton, data_source, dict(settings.model_copy(update=resolved)))
    runs = earlier_runs(settings.runs_dir, model_source.name)
    plan = plan_resume(sections.checkpoint, fingerprint, runs, notes)
    resolved |= _strategy(sections, plan, model_source, data_source, topology, cluster)
    final = settings.model_copy(update=resolved)  # the strategy resolved: now the files
    final = final.model_copy(update=weight_files(sections_of(final), skeleton, model_source))
    return _resolved_job(
        sections_of(final),
        model=model_source,
        data=data_source,
        validation=validation,
        topology=topology,
        threads_per_worker=threads,
        log_level=settings.log_level or caller_log_level(),
        fingerprint=fingerprint,
        config=settings_as_plain_data(final),
        notes=tuple(notes),
        plan=plan,
    )


def _inputs(
    model: Any, data: Any, settings: TrainingSettings
) -> tuple[ModelSource, DataSource, dict[str, Any], Sections]:
    """The model and data resolved, what they decide of the settings (``resolved``) and the
    settings' sections with it applied (each section checks its own rules)."""
    model_source = resolve_model(model)
    data_source = resolve_data(
        data, settings.task, settings.target, settings.num_classes, settings.collate_fn
    )
    resolved = adopt_loader_batch(settings, data_source)
    sections = sections_of(settings.model_copy(update=resolved))
    resolved |= check_custom_step(sections, model_source)
    data_source, from_stream = check_stream(sections, data_source)
    resolved |= from_stream
    check_fits_data(model_source, data_source.info)
    return model_source, data_source, resolved, sections


def earlier_runs(runs_dir: str | None, model_name: str) -> Callable[[], list[Path]]:
    """The checkpoint folders of earlier runs of ``model_name`` under ``runs_dir``, newest
    first, listed only when asked (``resume="auto"`` without ``checkpoint_dir``)."""
    if runs_dir is None:
        return list
    return lambda: [run / "checkpoints" for run in runs_of(Path(runs_dir), model_name)]


def _strategy(
    sections: Sections,
    plan: ResumePlan,
    model: ModelSource,
    data: DataSource,
    topology: Topology,
    cluster: HardwareProfile | None,
) -> dict[str, Any]:
    """The strategy, resolved: a resumed checkpoint's (``auto`` follows it; another one is
    refused, the two states differ), else ``auto``'s choice by the worker's memory (on
    ``cluster``'s hardware when given, else on this host)."""
    given, written = sections.parallel.strategy, plan.strategy
    if plan.found is not None and written is not None:
        if given not in ("auto", written):
            raise ConfigError(
                f"the checkpoint {plan.found.name} was written with strategy={written!r}; "
                f"resume it with strategy={written!r} (or 'auto'), not {given!r}"
            )
        return {"strategy": written}
    if given != "auto":
        return {}
    if cluster is not None:  # a GPU's memory, or a CPU host's shared by its workers
        budget = cluster.memory_bytes // (cluster.slots_per_host if cluster.kind == "cpu" else 1)
    else:
        budget = worker_memory_budget(sections.launch.use_gpus, topology.local_world_size)
    return {"strategy": choose_strategy(model, data.info, sections, budget)}


def _resolved_job(sections: Sections, *, plan: ResumePlan, **rest: Any) -> ResolvedJob:
    """The job from its final sections (the resume plan in the checkpoint section)."""
    checkpoint = dataclasses.replace(sections.checkpoint, plan=plan)
    return ResolvedJob(
        optim=sections.optim,
        loop=sections.loop,
        step=sections.step,
        checkpoint=checkpoint,
        parallel=sections.parallel,
        launch=sections.launch,
        tracking=sections.tracking,
        **rest,
    )

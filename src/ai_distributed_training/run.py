"""Run a prepared job: launch its workers (or join the job this process is a rank of), collect
rank 0's output, and assemble the :class:`~.result.TrainingResult`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from .errors import ConfigError, WorkerFailedError, warn_user
from .host import DirectoryLockedError, directory_lock
from .launch.base import Launcher
from .launch.elastic import ElasticLauncher
from .models.keras import load_weights
from .report import write_report
from .result import TrainingResult
from .rundir import SUMMARY_FILE, announce, checkpoint_dir, create_run_dir, write_config
from .topology import RankEnv
from .training.checkpoint import load_newest_valid, of_run, run_checkpoints, step_of
from .training.identity import new_run_id
from .training.job import Job, RankOutput, ResolvedJob
from .training.rank import join_process_group, run_rank
from .training.tracker_clients import end_runs
from .training.trackers import inherit_state
from .watch import live_page

STATUS = "distributed_trained"
STATUS_ACCELERATED = "distributed_trained_with_acceleration"


def run(prepared: ResolvedJob, *, started: float, inputs: dict[str, Any]) -> TrainingResult:
    """Train ``prepared`` and return its result. ``started``: ``time.perf_counter()`` when the
    call began; ``inputs``: how the model and data inputs appear in ``config.yaml``.

    Raises:
        ConfigError: ``checkpoint_dir`` is in use by another job (two jobs must not write
        checkpoints into one directory at once).
    """
    config = {**inputs, **prepared.config}
    joined = prepared.topology.joined
    if joined is not None:
        return _join(prepared, started, config, joined)
    with _checkpoint_dir_lock(prepared):
        return _launch(prepared, started, config)


@contextlib.contextmanager
def _checkpoint_dir_lock(prepared: ResolvedJob) -> Iterator[None]:
    """Hold ``checkpoint_dir`` for this job (host 0's caller, for a job over several hosts);
    a run directory's own checkpoints are this run's alone and need no lock."""
    given, topology = prepared.checkpoint.directory, prepared.topology
    directory = checkpoint_dir(given, None)  # checked writable first (a ConfigError if not)
    if directory is None or topology.node_rank != 0:
        yield
        return
    try:
        with directory_lock(directory):
            yield
    except PermissionError as err:  # its .lock file is another user's
        raise ConfigError(
            f"checkpoint_dir={given!r}: its lock file cannot be opened "
            f"({err.strerror}: {err.filename}; {_owner(err.filename)}); the directory is "
            "another user's: give this job a checkpoint_dir of your own"
        ) from None
    except DirectoryLockedError as err:
        raise ConfigError(
            f"checkpoint_dir={given!r}: {err}; two jobs must not share a "
            "checkpoint directory at once (each would resume and prune the other's checkpoints): "
            "give this one another checkpoint_dir, or wait for the other to finish"
        ) from None


def _owner(path: str | None) -> str:
    """Who owns ``path``, as the error about it should say."""
    try:
        info = os.stat(path or "")
    except OSError:
        return "owner unknown"
    return f"owned by uid {info.st_uid}, mode {stat.filemode(info.st_mode)}"


def _job(
    prepared: ResolvedJob,
    run_dir: Path | None,
    ckpt_dir: Path | None,
    config: dict[str, Any],
    *,
    run_id: str,
    pin_cpus: bool = False,
) -> Job:
    """What each rank gets: the resolved job, where to write, the config with the inputs."""
    weights_dir = _weights_dir(prepared, run_dir, ckpt_dir)
    return Job.of(
        prepared,
        run_dir=str(run_dir) if run_dir else None,
        checkpoint_dir=str(ckpt_dir) if ckpt_dir else None,
        weights_dir=str(weights_dir) if weights_dir else None,
        config=config,
        pin_cpus=pin_cpus,
        run_id=run_id,
    )


#: The folder of a run (or of a shared checkpoint directory) the weights are exported to.
WEIGHTS_DIR = "model"


def _weights_dir(prepared: ResolvedJob, run_dir: Path | None, ckpt_dir: Path | None) -> Path | None:
    """Where every rank exports the trained weights (result_weights='safetensors'): the run
    directory's ``model`` folder, or the checkpoint directory's on several hosts (the one
    folder they share); None: the weights come back whole."""
    if prepared.checkpoint.result_weights != "safetensors":
        return None
    shared = ckpt_dir if prepared.topology.nnodes > 1 else None
    base = shared or run_dir or ckpt_dir
    assert base is not None, "prepare refuses result_weights='safetensors' without a directory"
    return base / WEIGHTS_DIR


def _launch(prepared: ResolvedJob, started: float, config: dict[str, Any]) -> TrainingResult:
    """Start the workers (this host's, or Ray's) and wait for them."""
    launch, topology, plan = prepared.launch, prepared.topology, prepared.checkpoint.plan
    run_dir = create_run_dir(prepared.tracking.runs_dir, prepared.model.name)
    ckpt_dir = checkpoint_dir(prepared.checkpoint.directory, run_dir)
    if topology.hosts and prepared.checkpoint.directory is None:
        ckpt_dir = None  # each host's run directory is its own: only a shared dir will do
    write_config(run_dir, config)
    pin_cpus = launch.cpu_affinity and not launch.use_gpus and launch.launcher == "elastic"
    job = _job(prepared, run_dir, ckpt_dir, config, run_id=new_run_id(), pin_cpus=pin_cpus)
    origin = plan.path or plan.directory
    resuming = f" (resuming from {origin}: {plan.reason})" if origin else ""
    via = " on Ray" if launch.launcher == "ray" else ""
    message = f"Starting distributed training across {topology.world_size} nodes{via}{resuming}..."
    announce(run_dir, logging.INFO, message)
    announce(run_dir, logging.INFO, f"Data: {prepared.data.info.description}")
    for note in prepared.notes:
        announce(run_dir, logging.WARNING, note)
    inherit_state(run_dir, plan.found)  # a resumed run's tracker runs continue
    with _live_page(prepared, run_dir):  # until the page shows how the job ended
        try:
            out = make_launcher(launch.launcher).launch(
                job, progress=partial(_progress, ckpt_dir, job)
            )
        except WorkerFailedError as err:
            newest = load_newest_valid(ckpt_dir, of_run(job.run_id)) if ckpt_dir else None
            err.note_checkpoint(str(newest[0]) if newest else None)
            first_line = str(err).splitlines()[0]
            announce(run_dir, logging.ERROR, f"Distributed training failed: {first_line}")
            end_runs(run_dir, prepared.tracking.tracker_names, ok=False)
            raise
        return _finish(prepared, out, run_dir, ckpt_dir, started)


def _live_page(
    prepared: ResolvedJob, run_dir: Path | None
) -> contextlib.AbstractContextManager[None]:
    """The live page of ``run_dir`` while the job trains, with ``watch=True``."""
    tracking = prepared.tracking
    return live_page(
        run_dir, enabled=tracking.watch, host=tracking.watch_host, port=tracking.watch_port
    )


def make_launcher(name: str) -> Launcher:
    """The launcher the ``launcher`` setting names (each reads what it needs from the job)."""
    if name == "ray":
        from .launch.ray_launcher import RayLauncher  # Ray is an optional extra

        return RayLauncher()
    return ElasticLauncher()


def _join(
    prepared: ResolvedJob, started: float, config: dict[str, Any], env: RankEnv
) -> TrainingResult:
    """Train as one rank of a job someone else launched (torchrun: ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` set), in this very process: every rank runs
    the caller's script and every rank returns the full result; global rank 0 alone writes the
    run directory, whose path the others learn through the process group."""
    owns_group = not dist.is_initialized()
    join_process_group(prepared.launch, env)
    try:
        dirs: list[Any] = [None, None, new_run_id()]
        if env.rank == 0:
            dirs[0] = create_run_dir(prepared.tracking.runs_dir, prepared.model.name)
            dirs[1] = checkpoint_dir(prepared.checkpoint.directory, dirs[0])
            write_config(dirs[0], config)
            inherit_state(dirs[0], prepared.checkpoint.plan.found)
            message = f"Starting distributed training across {env.world_size} nodes (torchrun)..."
            announce(dirs[0], logging.INFO, message)
        dist.broadcast_object_list(dirs, src=0)  # collective: every rank, every time
        ckpt_dir = dirs[1]  # every rank reads and writes checkpoints in the same place
        run_dir = dirs[0] if env.rank == 0 else None  # rank 0's alone
        with _live_page(prepared, run_dir):  # run_dir: rank 0's alone
            # The data is not staged: this process holds it already.
            out = run_rank(_job(prepared, run_dir, ckpt_dir, config, run_id=dirs[2]), env)
            return _finish(prepared, out, run_dir, ckpt_dir, started)
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _progress(ckpt_dir: Path | None, job: Job) -> int:
    """The newest checkpoint step this run has written (-1: none): how far a restart resumes."""
    mine = run_checkpoints(ckpt_dir, job.run_id) if ckpt_dir else []
    return step_of(mine[0]) if mine else -1


def _finish(
    prepared: ResolvedJob,
    out: RankOutput,
    run_dir: Path | None,
    ckpt_dir: Path | None,
    started: float,
) -> TrainingResult:
    """The result of a finished job from a rank's output (weights included), written to the
    run directory when there is one."""
    result = TrainingResult(
        _result_model(prepared, out),
        **_facts(prepared, out),
        checkpoint_dir=str(ckpt_dir) if ckpt_dir else None,
        run_dir=str(run_dir) if run_dir else None,
        wall_time_s=time.perf_counter() - started,
    )
    if not result["weights_in_sync"]:
        warn_user(
            "the workers ended with different weights: something outside the "
            "optimizer changed parameters on some ranks (see weights_in_sync)"
        )
    if run_dir:
        (run_dir / SUMMARY_FILE).write_text(json.dumps(dict(result), indent=2) + "\n")
        write_report(run_dir)
        end_runs(run_dir, prepared.tracking.tracker_names, ok=True)
    announce(run_dir, logging.INFO, f"Distributed training complete. {result!r}")
    return result


def _result_model(prepared: ResolvedJob, out: RankOutput) -> nn.Module | Callable[[], nn.Module]:
    """The trained module, or (weights exported) what loads it on first use."""

    def build() -> nn.Module:
        from .training.export import load_export  # imports DCP: only when there is an export

        model = prepared.model.build(prepared.data.info)
        weights = load_export(Path(out.weights_dir)) if out.weights_dir else out.state_dict
        load_weights(model, weights)
        return model

    return build if out.weights_dir else build()


def _facts(prepared: ResolvedJob, out: RankOutput) -> dict[str, Any]:
    """The result's keys (but the model, the directories and the wall time), in their order."""
    info, history = prepared.data.info, out.history
    last = history[-1]
    scored = "train_accuracy" in last  # classification, unless the model's own loss is used
    names = ["loss", *(["accuracy"] if scored else []), *prepared.step.metrics]
    names += [  # a train_step's own named metrics
        k.removeprefix("train_") for k in last if k.startswith("train_") and k[6:] not in names
    ]
    metric_names = [f"{split}_{name}" for name in names for split in ("train", "val")]
    gpus = prepared.launch.use_gpus
    return {
        "model_name": prepared.model.name,
        "nodes_used": out.world_size,
        "status": STATUS_ACCELERATED if gpus else STATUS,
        "device": "GPUs" if gpus else "CPUs",
        "backend": "nccl" if gpus else "gloo",
        "task": info.task,
        "data": info.description,
        "epochs": len(history),  # fewer than the epochs setting when stopped early
        "global_batch_size": prepared.loop.batch_size,
        "steps": out.steps,
        "samples_seen": out.samples_seen,
        "final_loss": last["train_loss"],
        "metrics": {k: last.get(k) for k in metric_names},
        "history": history,
        "samples_per_second": out.samples_seen / out.train_time_s,
        "train_time_s": out.train_time_s,
        "threads_per_worker": prepared.threads_per_worker,
        "cpus_per_worker": out.cpus_per_worker,
        "peak_memory_per_worker_bytes": out.peak_memory_per_worker_bytes,
        "peak_host_memory_per_worker_bytes": out.peak_host_memory_per_worker_bytes,
        "model_state_bytes_per_worker": out.model_state_bytes_per_worker,
        "strategy": prepared.parallel.strategy,
        "weights_in_sync": out.weights_in_sync,
        "stopped_early": out.stopped_early,
        "restarts": out.restarts,
        "skipped_steps": out.skipped_steps,
        "resumed_from": out.resumed_from,
        "weights_dir": out.weights_dir,  # the exported weights (result_weights='safetensors')
    }

"""One rank's work: process group -> model and data -> loop -> result -> teardown.

The same code runs in a worker process our launcher started (:mod:`..launch.worker`) and in a
process torchrun started, where ``train_distributed`` joins the job in the caller's own process.
The rank comes from torchrun's environment variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..config.sections import LaunchSection
from ..data.streams import StreamReader
from ..host import (
    allowed_cpus,
    cpu_share,
    keep_freed_memory,
    peak_rss_bytes,
    pin_process,
    return_freed_memory,
)
from ..topology import RankEnv
from .context import RankContext, RankData
from .faults import FaultInjector
from .identity import check_data_unchanged
from .job import Job, RankOutput
from .loop import LoopResult, train
from .metrics import peak_memory_bytes
from .recompute import checkpoint_blocks
from .resume import Checkpointer, CheckpointHook, agreed_resume_point
from .sharding import train_val_split
from .strategies import Strategy, make_strategy
from .tracker_clients import make_loggers
from .trackers import TrackerRun
from .tracking import JobLog, RankZeroTracker, Tracker

log = logging.getLogger(__name__)


def run_rank(job: Job, env: RankEnv, *, on_checkpoint: CheckpointHook | None = None) -> RankOutput:
    """Train this rank's part of ``job``; returns the result (the same on every rank).
    ``on_checkpoint``: told of each checkpoint saved, on every rank (see
    :data:`.resume.CheckpointHook`)."""
    parallel = job.parallel
    set_up_process(job, env)
    # Opened before the process group starts its threads: loader processes fork now.
    data = open_data(job)
    owns_group = not dist.is_initialized()  # joined in the caller's process: theirs stays
    device, backend = join_process_group(job.launch, env)
    compute_dtype = autocast_dtype(parallel.precision, device)
    blocks = list(parallel.fsdp_blocks or job.model.blocks())
    strategy = make_strategy(
        parallel,
        env=env,
        device=device,
        blocks=blocks,
        compute_dtype=compute_dtype,
        in_callers_process=job.topology.joined is not None,
    )
    # Roles are decided once: global rank 0 logs the job and writes files, others don't.
    run_dir = Path(job.run_dir) if job.run_dir else None
    tracker = _rank_zero_tracker(job, run_dir) if env.rank == 0 else Tracker()
    failed = True
    try:
        log.debug("joined the process group (%s, world size %d)", backend, env.world_size)
        hooks = _RankHooks(restart_count=env.restart_count, on_checkpoint=on_checkpoint)
        result = _train_rank(job, data, strategy, tracker, compute_dtype, hooks)
        failed = False
        return result
    finally:
        tracker.close()
        strategy.close()
        # A failing rank keeps its connections open until its process exits, after its error
        # is recorded: closed now, its peers would fail first ("Connection closed by peer"),
        # and the launcher could see them fail before the root cause and stop it by a signal.
        if owns_group and not failed:
            dist.destroy_process_group()


def _rank_zero_tracker(job: Job, run_dir: Path | None) -> RankZeroTracker:
    """Global rank 0's tracker: the run's files, and the trackers the job asks for."""
    tracking, checkpoints = job.tracking, Path(job.checkpoint_dir) if job.checkpoint_dir else None
    run = TrackerRun(
        run_dir=run_dir,
        name=run_dir.name if run_dir else job.model.name,
        project=tracking.tracker_project or job.model.name,
        config=job.config,
        resumed=None,
    )
    state_dirs = [run_dir] if run_dir else []
    if checkpoints is not None and run_dir is not None and checkpoints.parent != run_dir:
        state_dirs.append(checkpoints)  # a shared checkpoint_dir
    return RankZeroTracker(run_dir, tracking.progress, make_loggers(tracking), run, state_dirs)


def set_up_process(job: Job, env: RankEnv) -> None:
    """What a training process needs before any tensor work: malloc settings, CPU pinning,
    threads, deterministic algorithms."""
    # A rank's process trains, launched by us or by torchrun alike: DDP's keeps freed memory
    # for speed; a sharded model's gives it back (memory is why it is sharded).
    if job.parallel.shards_model:
        return_freed_memory()
    else:
        keep_freed_memory()
    if job.pin_cpus:  # before the process group starts gloo's threads (they'd follow anyway)
        pin_process(cpu_share(allowed_cpus(), env.local_rank, env.local_world_size))
    torch.set_num_threads(job.threads_per_worker)
    if job.loop.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


@dataclass(frozen=True)
class _RankHooks:
    """What the launcher tells a rank besides the job: the restarts so far, and whom to tell
    of each checkpoint."""

    restart_count: int
    on_checkpoint: CheckpointHook | None


def _train_rank(
    job: Job,
    data: RankData,
    strategy: Strategy,
    tracker: Tracker,
    compute_dtype: torch.dtype | None,
    hooks: _RankHooks,
) -> RankOutput:
    """Build, resume, train and gather the result (collective: every rank)."""
    seed, rank = job.loop.seed, strategy.rank
    torch.manual_seed(seed)  # identical initial weights on every rank
    model = strategy.build_model(job.model, job.data.info)
    checkpoint_blocks(model, job.parallel.activation_checkpointing or ())
    # Per-rank stream (e.g. dropout), shared by tensor-parallel peers: they compute one replica.
    torch.manual_seed(seed + 1 + strategy.data.rank)
    ckpt_dir = Path(job.checkpoint_dir) if job.checkpoint_dir else None
    attempt, run_id, resume, resumed_from = agreed_resume_point(
        strategy, job, ckpt_dir, hooks.restart_count
    )
    ctx = RankContext(
        loop=job.loop,
        optim=job.optim,
        step=job.step,
        strategy=strategy,
        job_log=JobLog(enabled=rank == 0),
        tracker=tracker,
        checkpointer=Checkpointer(
            ckpt_dir,
            writes=rank == 0,
            keep=job.checkpoint.keep,
            every=job.checkpoint.every,
            config=job.config,
            run_id=run_id,
            fingerprint=job.fingerprint,
            resumed_from=resumed_from,
            on_saved=hooks.on_checkpoint,
        ),
        faults=FaultInjector(list(job.launch.fault_injection), rank, attempt),
        compute_dtype=compute_dtype,
        init_from=job.checkpoint.init_from,
    )
    _check_data_files(job, ctx.job_log)
    loop = train(model, data, ctx, resume)
    weights_dir = Path(job.weights_dir) if job.weights_dir else None
    return _gather_output(
        model, loop, strategy, weights_dir, restarts=attempt, resumed_from=resumed_from
    )


def _gather_output(
    model: nn.Module,
    loop: LoopResult,
    strategy: Strategy,
    weights_dir: Path | None,
    *,
    restarts: int,
    resumed_from: str | None,
) -> RankOutput:
    """The full weights (or, with ``weights_dir``, their export there) and the per-rank facts,
    gathered (collective: every rank)."""
    model.zero_grad(set_to_none=True)  # the last step's gradients: not needed, and as big
    if weights_dir is not None:  # no rank holds them whole; shards are disjoint, not replicas
        from .export import export_safetensors  # DCP imports FSDP: not for every DDP worker

        export_safetensors(model, weights_dir)
        state_dict, in_sync = {}, True
    else:
        state_dict = strategy.full_state_dict(model)  # a sharded model is gathered
        # Parameters only: buffers such as BatchNorm's running statistics are each rank's own.
        parameters = {name for name, _ in model.named_parameters()}
        mine = {k: v for k, v in state_dict.items() if k in parameters}
        in_sync = strategy.replicas_identical(mine)
    # Per-rank facts in one collective: peak memory (what the planner predicts: the GPU's
    # allocated, else host RSS), host RSS, the CPUs this rank could use, its model-state
    # bytes; one tuple per rank, in rank order.
    facts = strategy.all_gather_object(
        (
            peak_memory_bytes(strategy.device),
            peak_rss_bytes(),
            allowed_cpus(),
            loop.model_state_bytes,
        )
    )
    return RankOutput(
        state_dict=state_dict,
        history=loop.history,
        steps=loop.steps,
        samples_seen=loop.samples_seen,
        train_time_s=loop.train_time_s,
        weights_in_sync=in_sync,
        stopped_early=loop.stopped_early,
        skipped_steps=loop.skipped_steps,
        restarts=restarts,
        resumed_from=resumed_from,
        world_size=strategy.world_size,
        peak_memory_per_worker_bytes=[f[0] for f in facts],
        peak_host_memory_per_worker_bytes=[f[1] for f in facts],
        cpus_per_worker=[f[2] for f in facts],
        model_state_bytes_per_worker=[f[3] for f in facts],
        weights_dir=str(weights_dir) if weights_dir else None,
    )


def _check_data_files(job: Job, job_log: JobLog) -> None:
    """The data files this rank reads are as the caller found them (a change between a kill
    and this restart is refused; with ``allow_data_change``, said in events.log)."""
    allowed = job.checkpoint.allow_data_change
    for change in check_data_unchanged(job.data, job.fingerprint, allowed):
        job_log.warning("continuing on changed data (allow_data_change=True): %s", change)


def open_data(job: Job) -> RankData:
    """Open the job's data in this rank, with the fixed train/validation split, and start
    its loader processes (if any)."""
    reader = job.data.open()
    stream = reader if isinstance(reader, StreamReader) else None
    no_idx = torch.zeros(0, dtype=torch.long)
    if job.validation is not None:  # a separate validation set, all of it
        val_reader = job.validation.open()
        train_idx, val_idx = torch.arange(len(reader)), torch.arange(len(val_reader))
    elif stream is not None:  # read in order: no held-out split
        val_reader, train_idx, val_idx = reader, no_idx, no_idx
    else:  # the held-out split, read through a reader of its own (own loader processes)
        split = train_val_split(len(reader), job.loop.validation_split, job.loop.seed)
        train_idx, val_idx = split
        val_reader = job.data.open() if len(val_idx) else reader
    for opened in (reader, val_reader):
        start = getattr(opened, "start_loader_processes", None)
        if start is not None:
            start()
    return RankData(
        reader=reader,
        task=job.data.info.task,
        train_idx=train_idx,  # a stream has none (len 0): it is read in order
        val_reader=val_reader,
        val_idx=val_idx,
        stream=stream,
    )


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast when asked for, or on 'auto' where the GPU supports it; else None (fp32)."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def wait_for_rank0_store(rank: int, timeout_s: float) -> None:
    """On a rank other than 0, return once rank 0's store listens at MASTER_ADDR:MASTER_PORT
    (polled every 10 ms), or after ``timeout_s`` (torch then reports the failure itself).

    Why: torch's store client retries a refused connection only after a 0.5-1.5 s back-off,
    and a rank whose ``import torch`` finished before rank 0's is refused; that cost 0.3-0.7 s
    of start-up in most 2-worker jobs here. Rank 0 of our launcher's workers (and of Slurm
    tasks) serves the store; under torchrun's default the agent serves it, up before any rank.
    """
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    if rank == 0 or agent_store or not addr or not port:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((addr, int(port)), timeout=1.0).close()
            return
        except OSError:  # not listening yet
            time.sleep(0.01)


def join_process_group(launch: LaunchSection, env: RankEnv) -> tuple[torch.device, str]:
    """This rank's device and backend (NCCL on its GPU, else gloo), joining the job's process
    group from torchrun's environment unless this process is already in one."""
    if launch.use_gpus:
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        wait_for_rank0_store(env.rank, launch.collective_timeout_s)
        dist.init_process_group(
            backend,
            timeout=timedelta(seconds=launch.collective_timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    return device, backend

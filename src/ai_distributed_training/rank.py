"""One rank's work: process group -> model and data -> loop -> result -> teardown.

The same code runs in a worker process our launcher started (:mod:`.worker`) and in a process
torchrun started, where ``train_distributed`` joins the job in the caller's own process. The rank
comes from torchrun's environment variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
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
from typing import Any

import torch
import torch.distributed as dist

from .affinity import allowed_cpus, cpu_share, pin_process
from .checkpoint import load_checkpoint, load_newest_valid
from .config import TrainingSettings
from .faults import FaultInjector
from .hardware import peak_rss_bytes
from .job import Job, keep_freed_memory
from .loop import Checkpointer, train
from .sharding import train_val_split
from .strategies import DDPStrategy, Strategy
from .tracking import JobLog, RankZeroTracker, Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankEnv:
    """This process's place in the job, as torchrun's environment describes it."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int = 1

    @classmethod
    def from_environ(cls) -> RankEnv:
        return cls(
            int(os.environ["RANK"]),
            int(os.environ["LOCAL_RANK"]),
            int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        )


def find_resume_point(
    resume: str | None, ckpt_dir: Path | None, attempt: int
) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to start from and its path: after a restart (attempt > 0) or with
    ``resume="auto"``, the newest valid one in ``ckpt_dir``; with a path, that file; else none
    (a fresh start)."""
    if attempt > 0 or resume == "auto":
        found = load_newest_valid(ckpt_dir) if ckpt_dir else None
        if found is None:
            log.info("no checkpoint to resume from: starting from scratch")
            return None, None
        log.info("resuming from %s", found[0])
        return found
    if resume:
        return Path(resume), load_checkpoint(Path(resume))
    return None, None


def agreed_resume_point(
    strategy: Strategy, resume: str | None, ckpt_dir: Path | None
) -> tuple[int, dict[str, Any] | None]:
    """The attempt number and checkpoint every rank starts from (collective: all ranks call).

    Each host's elastic agent counts its own restarts, and an agent that re-rendezvoused
    because ANOTHER host restarted does not count one at all: its ranks would start afresh while
    the others resume, and the job would deadlock or abort on mismatched collectives. So the
    ranks take the largest count, and check that they all found the same checkpoint.
    """
    local = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    attempt = max(strategy.all_gather_object(local))
    path, state = find_resume_point(resume, ckpt_dir, attempt)
    found = strategy.all_gather_object(str(path) if path else None)
    if len(set(found)) > 1:
        raise RuntimeError(
            f"the ranks found different checkpoints to resume from ({dict(enumerate(found))}); "
            "every host must see the same checkpoint_dir (a shared filesystem)"
        )
    return attempt, state


def make_strategy(
    name: str,
    env: RankEnv,
    device: torch.device,
    blocks: list[str],
    compute_dtype: torch.dtype | None,
) -> Strategy:
    """The strategy object named by the ``strategy`` setting (``auto`` is resolved by the
    caller before any worker starts); ``blocks``: the module classes FSDP shards one by one."""
    if name == "fsdp":
        # Imported here: FSDP's modules (DCP, DTensor) add ~0.5 s to every worker's start-up.
        from .fsdp import FSDPStrategy

        # Mixed precision on GPU: blocks compute in bf16 (fp16), gradients are reduced in fp32.
        param_dtype = compute_dtype if device.type == "cuda" else None
        return FSDPStrategy(env.rank, env.world_size, device, blocks, param_dtype)
    return DDPStrategy(env.rank, env.world_size, device)


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


def join_process_group(settings: TrainingSettings, env: RankEnv) -> tuple[torch.device, str]:
    """This rank's device and backend (NCCL on its GPU, else gloo), joining the job's process
    group from torchrun's environment unless this process is already in one."""
    if settings.use_gpus:
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        wait_for_rank0_store(env.rank, settings.collective_timeout_s)
        dist.init_process_group(
            backend,
            timeout=timedelta(seconds=settings.collective_timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    return device, backend


def run_rank(job: Job, env: RankEnv) -> dict[str, Any]:
    """Train this rank's part of ``job``; returns the result (the same on every rank)."""
    settings = job.settings
    keep_freed_memory()  # a rank's process trains, launched by us or by torchrun alike
    if job.pin_cpus:  # before the process group starts gloo's threads (they'd follow anyway)
        pin_process(cpu_share(allowed_cpus(), env.local_rank, env.local_world_size))
    torch.set_num_threads(job.threads_per_worker)
    if settings.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    owns_group = not dist.is_initialized()  # joined in the caller's process: theirs stays
    device, backend = join_process_group(settings, env)
    compute_dtype = autocast_dtype(settings.precision, device)
    blocks = settings.fsdp_blocks or job.model.blocks()
    strategy = make_strategy(settings.strategy, env, device, blocks, compute_dtype)
    # Roles are decided once: global rank 0 logs the job and writes files, others don't.
    job_log = JobLog(enabled=env.rank == 0)
    run_dir = Path(job.run_dir) if job.run_dir else None
    tracker = (
        RankZeroTracker(run_dir, settings.progress, settings.tensorboard)
        if env.rank == 0
        else Tracker()
    )
    try:
        log.debug("joined the process group (%s, world size %d)", backend, env.world_size)
        torch.manual_seed(settings.seed)  # identical initial weights on every rank
        model = strategy.build_model(job.model, job.data.info)
        torch.manual_seed(settings.seed + 1 + env.rank)  # per-rank stream (e.g. dropout)
        reader = job.data.open()
        val_reader = job.validation.open() if job.validation else None
        held_out = 0.0 if val_reader is not None else settings.validation_split
        split = train_val_split(len(reader), held_out, settings.seed)
        ckpt_dir = Path(job.checkpoint_dir) if job.checkpoint_dir else None
        attempt, resume = agreed_resume_point(strategy, settings.resume, ckpt_dir)
        checkpointer = Checkpointer(ckpt_dir, env.rank == 0, settings.keep_checkpoints, job.config)
        faults = FaultInjector(settings.fault_injection, env.rank, attempt)
        loop = train(
            model,
            reader,
            job.data.info.task,
            split,
            settings,
            strategy,
            job_log,
            tracker,
            compute_dtype,
            checkpointer,
            faults,
            resume,
            val_reader,
        )
        state_dict = strategy.full_state_dict(model)  # collective: a sharded model is gathered
        in_sync = strategy.replicas_identical(state_dict)
        # Per-rank facts in one collective: peak memory (what the planner predicts), the CPUs
        # this rank could use, its model-state bytes.
        facts = strategy.all_gather_object(
            (peak_rss_bytes(), allowed_cpus(), loop.model_state_bytes)
        )  # one tuple per rank, in rank order
        return {
            "state_dict": state_dict,
            "history": loop.history,
            "steps": loop.steps,
            "samples_seen": loop.samples_seen,
            "train_time_s": loop.train_time_s,
            "weights_in_sync": in_sync,
            "stopped_early": loop.stopped_early,
            "skipped_steps": loop.skipped_steps,
            "restarts": attempt,
            "world_size": env.world_size,
            "peak_memory_per_worker_bytes": [peak for peak, _, _ in facts],
            "cpus_per_worker": [cpus for _, cpus, _ in facts],
            "model_state_bytes_per_worker": [state for _, _, state in facts],
        }
    finally:
        tracker.close()
        strategy.close()
        if owns_group:
            dist.destroy_process_group()

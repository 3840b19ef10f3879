"""Run a job on a Ray cluster through Ray Train (``launcher="ray"``).

Ray's engine, not a copy of it: ``ray.train.torch.TorchTrainer`` creates the worker processes
(``ScalingConfig``) and their process group (``TorchConfig``, with our collective timeout) and
lists the checkpoints the workers register (``ray.train.report``). Each worker runs the same
rank code as under torch elastic (:mod:`.ray_worker`). Restarts follow the same rule as under
torch elastic (:class:`.restarts.RestartPolicy`: an error that would repeat is not retried):
Ray's ``FailureConfig`` has no hook for it, so a failed run is fitted again, resuming from its
newest checkpoint, up to ``max_restarts`` times. Ray is an optional extra: nothing here imports
it at module level.
"""

from __future__ import annotations

import io
import logging
import math
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import cloudpickle
import torch

from ..config.sections import LaunchSection
from ..errors import ConfigError, RankFailure, WorkerFailedError
from ..host import available_cores, restored_environ, restored_signal_handlers
from ..training.job import Job, RankOutput
from ..training.tracking import EVENTS_FILE
from .ray_worker import TRACEBACK_ATTR
from .restarts import WORKER_DIED, RestartPolicy, log_restart, root_cause_first

RAY_EXTRA = "pip install 'ai-distributed-training[ray]'"
#: Seconds to wait for a TCP connection to a given Ray address before calling it unreachable
#: (Ray itself retries an unreachable head for minutes).
CONNECT_TIMEOUT_S = 5.0
#: Ray Train's variable for how often its controller polls the workers (Ray's default: 2 s).
POLL_INTERVAL_VAR = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def import_ray() -> ModuleType:
    """The ``ray`` module, or a ConfigError saying how to install it."""
    try:
        with restored_environ():  # importing Ray sets variables (RAY_CLIENT_MODE): not ours
            import ray
            import ray.train.torch  # Ray Train: the ray[train] extra
    except ImportError as err:
        raise ConfigError(
            f"launcher='ray' needs Ray Train, which is not installed ({err}): {RAY_EXTRA}"
        ) from None
    return ray


@dataclass(frozen=True, kw_only=True)
class RayCluster:
    """What the connected Ray cluster has now (its alive nodes' resources)."""

    address: str
    nodes: int
    cpus: float
    gpus: float
    #: The CPUs of the largest node: more per worker and a worker fits nowhere.
    largest_node_cpus: float


def connect(address: str | None) -> RayCluster:
    """Join the Ray cluster at ``address``; None: the one this process is connected to, else
    ``RAY_ADDRESS``, else a new local instance over this host's cores. Said at once when the
    address does not answer (Ray would retry for minutes).

    Raises:
        ConfigError: Ray is not installed, or the cluster cannot be reached.
    """
    ray = import_ray()
    if not ray.is_initialized():
        _check_reachable(address or os.environ.get("RAY_ADDRESS"))
        local = address is None and "RAY_ADDRESS" not in os.environ
        options: dict[str, Any] = (
            {"num_cpus": available_cores(), "include_dashboard": False} if local else {}
        )
        # Ray's own log lines below ERROR stay in its session logs (/tmp/ray/session_latest):
        # without Ray's dashboard its placement-group monitor warns every second of a fit.
        quiet = ray.LoggingConfig(log_level="ERROR")
        # ray.init sets variables and root-logger handlers for its own use, in the caller's
        # process, which is not Ray's: both are put back (the debugger's variable too).
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            with restored_environ():
                ray.init(
                    address=address, logging_level=logging.ERROR, logging_config=quiet, **options
                )
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ConfigError(
                f"ray_address={address!r}: could not join a Ray cluster ({type(err).__name__}: "
                f"{err}); start one (ray start --head) or pass its address ('HOST:6379', "
                "'ray://HOST:10001', 'auto')"
            ) from None
        finally:
            root.handlers[:], root.level = handlers, level
    alive = [node for node in ray.nodes() if node.get("Alive")]
    return RayCluster(
        address=str(ray.get_runtime_context().gcs_address),
        nodes=len(alive),
        cpus=sum(n["Resources"].get("CPU", 0.0) for n in alive),
        gpus=sum(n["Resources"].get("GPU", 0.0) for n in alive),
        largest_node_cpus=max((n["Resources"].get("CPU", 0.0) for n in alive), default=0.0),
    )


def _check_reachable(address: str | None) -> None:
    """A ConfigError when ``address`` names a host and port nobody answers on."""
    if not address or address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"ray_address={address!r} is not an address; use 'HOST:PORT' (the head's GCS "
            "port, 6379 by default), 'ray://HOST:10001' (Ray Client) or 'auto'"
        )
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ConfigError(
            f"ray_address={address!r}: nothing answers there ({err}); check that the Ray head "
            "runs (ray status) and that this machine can reach it"
        ) from None


def workers_fit(launch: LaunchSection, cluster: RayCluster) -> int:
    """CPUs (= torch threads) per worker: ``threads_per_worker``, else the cluster's CPUs shared
    by the workers (at most a node's). Checked against the cluster, since Ray would wait
    forever for resources it does not have.

    Raises:
        ConfigError: the workers do not fit on the cluster.
    """
    nodes = launch.nodes
    share = min(cluster.cpus // nodes, cluster.largest_node_cpus)
    threads = launch.threads_per_worker or max(1, int(share))
    short = cluster.cpus < nodes * threads or threads > cluster.largest_node_cpus
    if launch.use_gpus and cluster.gpus < nodes:
        short = True
    if short:
        gpus = f" and {nodes} GPUs" if launch.use_gpus else ""
        raise ConfigError(
            f"nodes={nodes} Ray workers with {threads} CPU(s) each need {nodes * threads} CPUs"
            f"{gpus}, but the Ray cluster at {cluster.address} has {cluster.cpus:g} CPUs "
            f"(at most {cluster.largest_node_cpus:g} on a node) and {cluster.gpus:g} GPUs; "
            "use fewer nodes, a smaller threads_per_worker, or a larger cluster (Ray would "
            "wait for the resources forever)"
        )
    return threads


@dataclass(frozen=True, kw_only=True)
class RayLauncher:
    """The workers of a job as Ray Train workers: ``nodes`` of them, each with the job's
    ``threads_per_worker`` CPUs (its torch threads; Ray places them, no pinning) and a GPU
    with ``use_gpus``. The job travels through Ray's object store."""

    def launch(self, job: Job, *, progress: Callable[[], int]) -> RankOutput:
        """See :class:`.base.Launcher`. A failed run is fitted again (the workers resume from
        its newest checkpoint) while restarts are left and ``progress`` shows that a restart
        can help (see :class:`.restarts.RestartPolicy`)."""
        from ray.train.v2.api.exceptions import TrainingFailedError

        ray, settings = import_ray(), job.launch
        connect(settings.ray_address)
        shared_job = ray.put(cloudpickle.dumps(job))  # once, however many fits
        policy = RestartPolicy(progress)
        restarts_left = settings.max_restarts
        while True:
            try:
                # Ray's fit installs its own SIGINT handler; the poll interval is read in fit.
                with restored_signal_handlers([signal.SIGINT]), restored_environ():
                    os.environ.setdefault(POLL_INTERVAL_VAR, str(poll_interval_s(settings.nodes)))
                    result = self._trainer(job, shared_job).fit()
                break
            except TrainingFailedError as err:
                failed = worker_failed(err)
                if restarts_left == 0:
                    raise failed from None
                reason = policy.why_not_restart(failed.first)
                if reason is not None:
                    raise WorkerFailedError(failed.failures, reason) from None
                restarts_left -= 1
                events = Path(job.run_dir) / EVENTS_FILE if job.run_dir else None
                if events is not None and events.parent.is_dir():  # rank 0's, on this host
                    restart = settings.max_restarts - restarts_left
                    log_restart(events, restart, settings.max_restarts, failed.first)
        returned = getattr(result, "return_value")  # noqa: B009  (Ray Train V2's Result)
        facts, state_dict = torch.load(io.BytesIO(returned), weights_only=True)
        return RankOutput.of(facts, state_dict)

    def _trainer(self, job: Job, shared_job: Any) -> Any:
        """One fit of the job's workers, which load it from ``shared_job`` (its reference in
        Ray's object store). A restart is another fit of the same run: the same name and
        storage, where the workers count attempts and find the checkpoints."""
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from .ray_worker import train_worker

        settings = job.launch
        resources = {"CPU": job.threads_per_worker, **({"GPU": 1} if settings.use_gpus else {})}
        storage = settings.ray_storage_path or (
            str(Path(job.run_dir).resolve()) if job.run_dir else None
        )
        return TorchTrainer(
            cast(Any, train_worker),  # typed as returning None; Ray V2 returns rank 0's value
            train_loop_config={
                "job": shared_job,
                "sys_path": [p for p in sys.path if p],  # the caller's modules import there
            },
            scaling_config=ScalingConfig(
                num_workers=settings.nodes,
                use_gpu=settings.use_gpus,
                resources_per_worker=resources,
            ),
            torch_config=TorchConfig(
                backend="nccl" if settings.use_gpus else "gloo",
                timeout_s=math.ceil(settings.collective_timeout_s),
            ),
            run_config=RunConfig(
                name=f"adt-{job.run_id}",
                storage_path=storage,
                failure_config=FailureConfig(max_failures=0),  # restarts: see launch
                checkpoint_config=CheckpointConfig(num_to_keep=job.checkpoint.keep),
            ),
        )


def poll_interval_s(nodes: int) -> float:
    """How often Ray Train's controller should poll ``nodes`` workers, in seconds: 0.01 s per
    worker, between 0.2 s and Ray's default of 2 s. Each ``ray.train.report`` (one per
    checkpoint) waits in a one-slot queue until the controller's next poll takes it, and a fit
    ends only after a poll found every worker done: at Ray's 2 s, a fit of 18 small steps with
    6 checkpoints took 26 s (training 6 s of it, 9 s after its end), at 0.2 s 12.5 s (0.6 s,
    1.4 s). A poll of a busy worker is not a missed health check (it is awaited at the next
    one), and 200 or more workers keep Ray's 2 s. A user's own setting of the variable wins."""
    return min(2.0, max(0.2, 0.01 * nodes))


def worker_failed(err: Exception) -> WorkerFailedError:
    """Ray's failure of a training run as ours: the failed ranks, root cause first (a rank
    that only lost its peer comes last), with what each raised; a run that failed outside the
    workers (Ray's controller) as rank -1's failure."""
    failures: dict[int, BaseException] = getattr(err, "worker_failures", None) or {-1: err}
    return WorkerFailedError(root_cause_first([_rank_failure(r, e) for r, e in failures.items()]))


def _rank_failure(rank: int, error: BaseException) -> RankFailure:
    cause = error.__cause__ or error  # Ray wraps a worker's exception in RayTaskError
    if hasattr(cause, TRACEBACK_ATTR):  # raised in our worker, which kept its traceback
        return RankFailure(rank, 1, None, _one_line(cause), getattr(cause, TRACEBACK_ATTR))
    died = type(error).__name__ in ("ActorDiedError", "RayActorError", "ActorUnavailableError")
    message = _one_line(cause)
    if died:
        message = f"{WORKER_DIED} ({type(error).__name__})"
    trace = "" if died else "".join(traceback.format_exception(cause))
    return RankFailure(rank, -1 if died else 1, None, message, trace)


def _one_line(error: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"

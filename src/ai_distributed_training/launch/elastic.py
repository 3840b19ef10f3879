"""Create local workers with torch.distributed.elastic (what torchrun runs) and report failures:
:class:`ElasticLauncher`, the default launcher, and :func:`launch_local` beneath it.

The elastic agent runs inside the caller's process; each worker is a fresh interpreter running
``python -m <module>`` (the training worker: :mod:`.worker`), so the user's script is never
re-executed. When one worker fails, the agent stops all of them and we raise
:class:`~..errors.WorkerFailedError` naming the root-cause rank. The agent replaces the caller's
signal handlers and sets environment variables; both are restored afterwards, and Ctrl-C
reaches the caller as ``KeyboardInterrupt`` after every worker has stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.distributed.elastic.agent.server.api import WorkerSpec
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous import registry as rdzv_registry
from torch.distributed.elastic.rendezvous.api import RendezvousError
from torch.distributed.launcher.api import LaunchConfig

from ..config.sections import Hosts
from ..errors import RankFailure, RendezvousFailedError, TrainingInterrupted, WorkerFailedError
from ..host import interface_with_address, restored_environ, restored_signal_handlers
from ..training.job import Job, RankOutput
from ..training.tracking import EVENTS_FILE
from . import worker
from .handover import JobFiles, new_job_dir, remove_stale_job_dirs
from .restarts import PolicyAgent, RestartPolicy, root_cause_first
from .worker import LAUNCHER_PID

_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_ELASTIC_EVENTS_LOGGER = "torchelastic-events-null"  # event_log_handler="null" logs here
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


@contextlib.contextmanager
def _restored_process_state() -> Iterator[None]:
    """Undo what the elastic agent changes in the caller: signal handlers and os.environ."""
    with restored_environ(), restored_signal_handlers(_HANDLED_SIGNALS), _events_kept_out():
        _set_worker_environ()
        yield


@contextlib.contextmanager
def _events_kept_out() -> Iterator[None]:
    """The agent logs a JSON event per worker state change at INFO: kept out of the app's
    logs within the block."""
    events = logging.getLogger(_ELASTIC_EVENTS_LOGGER)
    events_propagate, events.propagate = events.propagate, False
    try:
        yield
    finally:
        events.propagate = events_propagate


def _set_worker_environ() -> None:
    """What every worker's environment needs, set in ours (the agent passes it on)."""
    # Workers must import this package even when the caller found it through sys.path tweaks.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p
    )
    # Workers check they were started by this process (see worker.die_with_parent).
    os.environ[LAUNCHER_PID] = str(os.getpid())
    # Workers get a fresh store per attempt (pytorch issue 135712: a shared rendezvous store
    # made restarts read stale addresses).
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"


@dataclass(frozen=True, kw_only=True)
class ElasticLauncher:
    """This host's workers through torch elastic: the topology's ``local_world_size`` worker
    processes (the job's all, or with ``hosts`` this host's share of a job over several),
    restarted together up to the ``max_restarts`` setting's times. The job travels as files
    (:class:`.handover.JobFiles`): data staged once and memory-mapped by every worker."""

    def launch(self, job: Job, *, progress: Callable[[], int]) -> RankOutput:
        remove_stale_job_dirs()
        hosts = job.topology.hosts
        run_dir = Path(job.run_dir) if job.run_dir else None
        files = JobFiles(job_dir=new_job_dir(), run_dir=run_dir)
        try:
            job_path = files.write_job(job)
            launch_local(
                [worker.__name__, str(job_path)],
                job.topology.local_world_size,
                log_dir=files.job_dir / "elastic",
                max_restarts=job.launch.max_restarts,
                hosts=hosts,
                # Across hosts every agent must restart together: elastic's plain rule there.
                policy=None if hosts else RestartPolicy(progress),
                # Why each restart happened, in the run's story (host 0's run directory).
                events=run_dir / EVENTS_FILE
                if run_dir and not (hosts and hosts.node_rank)
                else None,
            )
            return files.read_result()
        finally:
            shutil.rmtree(files.job_dir, ignore_errors=True)


def launch_local(
    module_args: Sequence[str],
    nproc: int,
    log_dir: Path,
    max_restarts: int = 0,
    shutdown_timeout_s: int = 5,
    hosts: Hosts | None = None,
    policy: RestartPolicy | None = None,
    events: Path | None = None,
) -> None:
    """Run ``nproc`` workers of ``python -m <module_args>`` on this host and wait for them;
    with ``hosts``, as one host of a multi-host job whose agents meet at its endpoint. After a
    failure the workers are restarted (all of them) up to ``max_restarts`` times, unless
    ``policy`` says a restart cannot help; each restart and its reason is appended to
    ``events`` (the run's events.log).

    Elastic's per-attempt error files go under ``log_dir``.

    Raises:
        WorkerFailedError: a worker raised or died; every worker has been stopped.
        RendezvousFailedError: not every host joined within ``hosts.rdzv_timeout_s``.
        KeyboardInterrupt: the caller was interrupted; every worker has been stopped.
        TrainingInterrupted: SIGTERM, SIGHUP or SIGQUIT; every worker has been stopped.
    """
    config = _launch_config(nproc, log_dir, max_restarts, shutdown_timeout_s, hosts)
    with _restored_process_state():
        if hosts and hosts.local_addr and "GLOO_SOCKET_IFNAME" not in os.environ:
            interface = interface_with_address(hosts.local_addr)
            if interface:  # gloo would bind to whatever the hostname resolves to
                os.environ["GLOO_SOCKET_IFNAME"] = interface
        try:
            _run_agent(config, ["-m", *module_args], policy, events)
        except RendezvousError as err:
            if hosts is None:  # one host meets itself on loopback: not a missing host
                raise
            raise RendezvousFailedError(
                f"the hosts did not all join the job at {config.rdzv_endpoint} within "
                f"rdzv_timeout_s={hosts.rdzv_timeout_s} "
                f"({type(err).__name__}: {err}); check that every one of the "
                f"{config.max_nodes} hosts runs the same command with its own node_rank and "
                "can reach the endpoint"
            ) from None
        except SignalException as err:  # the agent has stopped every worker
            if err.sigval == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise TrainingInterrupted(err.sigval) from None


def _launch_config(
    nproc: int, log_dir: Path, max_restarts: int, shutdown_timeout_s: int, hosts: Hosts | None
) -> LaunchConfig:
    """torchrun's settings for this host: a free local port on one host; the shared endpoint,
    served by host 0, across hosts."""
    if hosts is None:
        where: dict[str, Any] = {
            "min_nodes": 1,
            "max_nodes": 1,
            "run_id": f"adt-{uuid.uuid4().hex[:12]}",
            "rdzv_endpoint": "127.0.0.1:0",  # port 0: free, so jobs on one host never collide
            "local_addr": "127.0.0.1",
        }
    else:
        where = {
            "min_nodes": hosts.nnodes,
            "max_nodes": hosts.nnodes,
            "run_id": "adt-" + re.sub(r"[^A-Za-z0-9]", "-", hosts.rdzv_endpoint),  # same on all
            "rdzv_endpoint": hosts.rdzv_endpoint,
            # Host 0 serves the rendezvous store: said outright, because the hostname check
            # torch otherwise makes fails on multi-homed hosts (and in network namespaces).
            "rdzv_configs": {
                "is_host": hosts.node_rank == 0,
                "join_timeout": hosts.rdzv_timeout_s,
            },
            "local_addr": hosts.local_addr,
        }
    return LaunchConfig(
        nproc_per_node=nproc,
        rdzv_backend="c10d",
        max_restarts=max_restarts,  # the agent restarts ALL workers when one fails
        monitor_interval=0.1,
        logs_specs=DefaultLogsSpecs(log_dir=str(log_dir)),
        shutdown_timeout=shutdown_timeout_s,
        **where,
    )


def _run_agent(
    config: LaunchConfig, args: list[str], policy: RestartPolicy | None, events: Path | None
) -> None:
    """What ``torch.distributed.launcher.elastic_launch`` does, with our agent (which asks
    ``policy`` before each restart) in place of its own.

    Raises:
        WorkerFailedError: the workers failed (and were not, or no longer, restarted).
    """
    parameters = RendezvousParameters(
        backend=config.rdzv_backend,
        endpoint=config.rdzv_endpoint,
        run_id=config.run_id,
        min_nodes=config.min_nodes,
        max_nodes=config.max_nodes,
        local_addr=config.local_addr,
        **config.rdzv_configs,
    )
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = config.signals_to_handle
    spec = WorkerSpec(
        role=config.role,
        local_world_size=config.nproc_per_node,
        entrypoint=sys.executable,
        args=tuple(args),
        rdzv_handler=rdzv_registry.get_rendezvous_handler(parameters),
        max_restarts=config.max_restarts,
        monitor_interval=config.monitor_interval,
        local_addr=config.local_addr,
    )
    agent = PolicyAgent(
        policy=policy,
        root_cause=lambda failures: rank_failures(failures)[0],
        events=events,
        spec=spec,
        logs_specs=config.logs_specs,
        start_method=config.start_method,
        shutdown_timeout=config.shutdown_timeout,
    )
    try:
        result = agent.run()
    except SignalException:
        raise  # as torch's launcher: a signalled agent keeps the rendezvous open
    except BaseException:
        spec.rdzv_handler.shutdown()
        raise
    spec.rdzv_handler.shutdown()
    if result.is_failed():
        raise WorkerFailedError(rank_failures(result.failures), agent.stopped_because)


def rank_failures(failures: dict[int, ProcessFailure]) -> list[RankFailure]:
    """The agent's failures as ours, root cause first (see :func:`.restarts.root_cause_first`)."""
    return root_cause_first([_rank_failure(rank, f) for rank, f in failures.items()])


def _rank_failure(rank: int, failure: ProcessFailure) -> RankFailure:
    # @record writes {"message": {"message": "Type: text", "extraInfo": {"py_callstack": ...}}};
    # ProcessFailure.message holds the inner object (a dict) or, for a dead process, a string.
    inner: Any = failure.message
    text = inner.get("message", "") if isinstance(inner, dict) else str(inner or "")
    extra = inner.get("extraInfo", {}) if isinstance(inner, dict) else {}
    traceback = str(extra.get("py_callstack", "")) if isinstance(extra, dict) else ""
    signal_name = failure.signal_name() if failure.exitcode < 0 else None
    if not text or text.startswith("To enable traceback"):
        text = (
            f"the process was killed by {signal_name}"
            if signal_name
            else f"the process exited with code {failure.exitcode}"
        )
    return RankFailure(rank, failure.exitcode, signal_name, text.strip(), traceback)

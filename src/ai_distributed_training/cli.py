"""The ``adt`` command: ``train``, ``plan``, ``simulate``, ``report`` and ``doctor``.

Exit codes: 0 success; 2 usage or config error (one clear line, no traceback); 1 training failure
(naming the failing rank) or a failed doctor check.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .api import DistributedTraining
from .config import TrainingSettings, runfile
from .errors import ConfigError, RendezvousFailedError, SimulationError, WorkerFailedError
from .host import available_cores, check_writable_dir
from .launch import probe
from .launch.elastic import launch_local
from .launch.ray_launcher import RAY_EXTRA
from .planner.profiles import PRESETS, THIS_MACHINE, save_profile
from .report import write_report
from .rundir import CONFIG_FILE
from .topology import slurm_job
from .watch import start_server


def _settings_help() -> str:
    lines = ["settings (in a --config file or as --set NAME=VALUE):"]
    for name, field in TrainingSettings.model_fields.items():
        if name in runfile.PYTHON_ONLY:
            continue
        default = field.get_default(call_default_factory=True)
        lines.append(f"  {name} (default: {default!r})\n      {field.description}")
    lines.append(
        "  model.*  model spec, e.g. --set model.hidden_sizes=[64,64] "
        "(model_name, architecture: mlp|linear, hidden_sizes, dropout, activation)"
    )
    lines.append(
        "  data.*   synthetic data spec, e.g. --set data.samples=3000 (samples, features, "
        "classes, task, seed), or data=PATH to a .npy/.npz/.pt/.csv file"
    )
    lines.append(
        "\nWith no arguments: the documented example (NeuralNet_Model, 100000 x 128 "
        "synthetic samples, 3 nodes)."
    )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adt", description="Distributed PyTorch training.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    _train_parser(sub)
    _plan_parser(sub)
    _simulate_parser(sub)
    report = sub.add_parser("report", help="re-render a run's report.html and plots")
    report.add_argument("run_dir", metavar="RUN_DIR")

    watch = sub.add_parser(
        "watch", help="serve the live page of the runs under a runs dir (or of one run)"
    )
    watch.add_argument(
        "path", nargs="?", default="runs", metavar="RUNS_OR_RUN_DIR", help="default: runs"
    )
    watch.add_argument("--host", default="127.0.0.1", help="address to serve on (127.0.0.1)")
    watch.add_argument("--port", type=int, default=8765, help="port (8765; 0: a free one)")

    doctor = sub.add_parser("doctor", help="check this environment can run distributed jobs")
    doctor.add_argument("--runs-dir", default="runs", help="run directory root to check")
    doctor.add_argument(
        "--ray-address", metavar="ADDR", help="also check this Ray cluster can be reached"
    )
    return parser


def _train_parser(sub: Any) -> None:
    """``adt train``: the API's settings from a YAML file and ``--set``, hosts, Ray."""
    train = sub.add_parser(
        "train",
        help="train a model across N worker processes",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--config", metavar="FILE", help="YAML run config (the API's names)")
    train.add_argument("--nodes", type=int, metavar="N", help="worker processes (all hosts)")
    hosts = train.add_argument_group(
        "multi-host (run the same command on every host, each with its --node-rank)"
    )
    hosts.add_argument("--nnodes", type=int, metavar="H", help="hosts in the job")
    hosts.add_argument(
        "--nproc-per-node", type=int, metavar="K", help="workers per host (nodes = H x K)"
    )
    hosts.add_argument("--node-rank", type=int, metavar="I", help="this host's index, 0..H-1")
    hosts.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="host 0's rendezvous")
    hosts.add_argument("--local-addr", metavar="ADDR", help="this host's address for the others")
    hosts.add_argument("--rdzv-timeout", type=float, metavar="S", help="seconds to wait for hosts")
    ray = train.add_argument_group("Ray (pip install 'ai-distributed-training[ray]')")
    ray.add_argument(
        "--launcher", choices=("elastic", "ray"), help="who creates the workers (elastic)"
    )
    ray.add_argument(
        "--ray-address", metavar="ADDR", help="the Ray cluster: HOST:6379, ray://HOST:10001, auto"
    )
    train.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting; dotted for nesting (data.samples=3000)",
    )


def _job_arguments(parser: argparse.ArgumentParser, *, nodes: str) -> None:
    """The job's inputs as ``adt train`` takes them, and a list of node counts."""
    parser.add_argument("--config", metavar="FILE", help="YAML run config (as for adt train)")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override"
    )
    parser.add_argument("--nodes", type=int, nargs="+", metavar="N", help=nodes)


def _plan_parser(sub: Any) -> None:
    """``adt plan``: the same inputs as ``adt train``, node counts, hardware, outputs."""
    plan = sub.add_parser(
        "plan",
        help="predict memory, speed and the right node count (trains nothing)",
        description="Predict memory per worker, step time, samples/s and scaling efficiency "
        "for N = 1, 2, 4, ..., 1024 workers on the given hardware, from the same --config "
        "and --set options as 'adt train'.",
    )
    _job_arguments(plan, nodes="node counts (default 1 2 4 ... 1024)")
    plan.add_argument(
        "--hardware",
        default=THIS_MACHINE,
        metavar="NAME|FILE",
        help=f"{THIS_MACHINE} (calibrated here, the default), a preset "
        f"({', '.join(sorted(PRESETS))}) or a profile YAML file",
    )
    plan.add_argument(
        "--calibrate", action="store_true", help="measure this machine again (~20 s) and save it"
    )
    plan.add_argument(
        "--threshold", type=float, default=0.8, help="lowest acceptable scaling efficiency"
    )
    plan.add_argument(
        "--simulate",
        action="store_true",
        help="memory per worker from a simulation of the real step at each size (slower)",
    )
    plan.add_argument("--json", action="store_true", help="print one JSON object per node count")
    plan.add_argument("--plot", metavar="PNG", help="write samples/s and efficiency vs nodes")
    plan.add_argument(
        "--save-hardware", metavar="FILE", help="write the hardware profile used, to edit"
    )


def _simulate_parser(sub: Any) -> None:
    """``adt simulate``: the same inputs as ``adt train``, world sizes, ranks, hardware."""
    sim = sub.add_parser(
        "simulate",
        help="run the job's real step as ranks of a huge world, on this host (trains nothing)",
        description="Pose as chosen ranks of worlds of N workers on torch's fake process "
        "group and run the job's real step (from the same --config and --set options as "
        "'adt train'): memory by category, collectives and bytes, data share, checkpoint "
        "bytes per rank, a predicted step time on the given hardware, and what fails.",
    )
    _job_arguments(sim, nodes="world sizes (default 8 64 1024 4096)")
    sim.add_argument(
        "--ranks",
        type=_int_list,
        metavar="R,R,...",
        help="ranks to pose as (default: first, last, smallest and largest data share)",
    )
    sim.add_argument(
        "--hardware",
        default="h100-nvlink-400g",
        metavar="NAME|FILE",
        help=f"a preset ({', '.join(sorted(PRESETS))}; default h100-nvlink-400g), "
        f"{THIS_MACHINE} or a profile YAML file",
    )
    sim.add_argument("--steps", type=int, default=2, help="steps per rank (the last is measured)")
    sim.add_argument(
        "--fake-tensors",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="shapes only, no memory for weights (default: above 1 GiB of weights)",
    )
    sim.add_argument("--json", action="store_true", help="print one JSON object per rank")
    sim.add_argument("--out", metavar="DIR", help="write simulation.html, .png and .json here")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give ranks as 0,17,4095") from None


def _host_settings(args: argparse.Namespace) -> dict[str, Any]:
    """torchrun-style flags as settings: --nnodes H --nproc-per-node K means nodes = H x K."""
    out: dict[str, Any] = {}
    for flag, name in (
        ("nnodes", "nnodes"),
        ("node_rank", "node_rank"),
        ("rdzv_endpoint", "rdzv_endpoint"),
        ("local_addr", "local_addr"),
        ("rdzv_timeout", "rdzv_timeout_s"),
    ):
        if getattr(args, flag) is not None:
            out[name] = getattr(args, flag)
    if args.nproc_per_node is not None:
        if args.nodes is not None:
            raise ConfigError("give --nodes (all workers) or --nproc-per-node, not both")
        slurm = slurm_job(os.environ)
        hosts_from_slurm = slurm.nnodes if slurm and not slurm.task_per_worker else 1
        out["nodes"] = args.nproc_per_node * out.get("nnodes", hosts_from_slurm)
    return out


def launcher_settings(args: argparse.Namespace) -> dict[str, Any]:
    """--launcher and --ray-address as settings (only those given)."""
    flags = {"launcher": args.launcher, "ray_address": args.ray_address}
    return {name: value for name, value in flags.items() if value is not None}


def cmd_train(args: argparse.Namespace) -> int:
    model, data, settings = runfile.resolve(args.config, args.sets, args.nodes)
    settings.update(_host_settings(args))
    settings.update(launcher_settings(args))
    if "progress" not in settings:  # a terminal gets a bar; logs (CI, Slurm) get lines
        settings["progress"] = "bar" if sys.stderr.isatty() else "lines"
    result = DistributedTraining().train_distributed(model, data, **settings)
    print(result)
    if result.get("run_dir"):
        print(f"run directory: {result['run_dir']}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    model, data, settings = runfile.resolve(args.config, args.sets, None)
    configured = settings.pop("nodes", None)
    nodes = args.nodes or (configured if isinstance(configured, int) else None)
    plan = DistributedTraining().plan(
        model,
        data,
        nodes=nodes,
        hardware=args.hardware,
        calibrate=args.calibrate,
        threshold=args.threshold,
        simulate=args.simulate,
        **settings,
    )
    if args.json:
        print(json.dumps(plan.to_json(), indent=1))
    else:
        print(plan.table())
    if args.plot:
        print(f"plot: {plan.plot(Path(args.plot))}", file=sys.stderr)
    if args.save_hardware:
        saved = save_profile(plan.hardware, Path(args.save_hardware))
        print(f"hardware profile: {saved}", file=sys.stderr)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    model, data, settings = runfile.resolve(args.config, args.sets, None)
    configured = settings.pop("nodes", None)
    nodes = args.nodes or ([configured] if isinstance(configured, int) else [8, 64, 1024, 4096])
    sim = DistributedTraining().simulate(
        model,
        data,
        nodes=nodes,
        hardware=args.hardware,
        ranks=args.ranks,
        steps=args.steps,
        fake_tensors=args.fake_tensors,
        **settings,
    )
    print(json.dumps(sim.to_json(), indent=1) if args.json else sim.table())
    if args.out:
        print(f"simulation: {sim.save(Path(args.out))}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / "summary.json").is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a finished run directory (no summary.json)")
    print(write_report(run_dir))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Serve the live page until Ctrl-C: of the runs under PATH, or of the run PATH is."""
    path = Path(args.path).resolve()
    if not path.is_dir():
        raise ConfigError(f"{args.path!r} is not a directory: give a runs dir or a run dir")
    one_run = (path / CONFIG_FILE).is_file()
    try:
        server = start_server(path.parent if one_run else path, host=args.host, port=args.port)
    except OSError as err:
        raise ConfigError(f"cannot serve on {args.host}:{args.port}: {err.strerror}") from None
    print(f"adt watch: {server.url}" + (f"?run={path.name}" if one_run else ""), flush=True)
    try:
        threading.Event().wait()  # the server's thread serves; Ctrl-C ends it
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _check_allreduce() -> str:
    with tempfile.TemporaryDirectory(prefix="adt-doctor-") as tmp:
        launch_local([probe.__name__], 2, log_dir=Path(tmp))
    return "2 gloo processes all-reduced correctly"


def _check_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"a free port was found ({s.getsockname()[1]})"


def _check_runs_dir(path: str) -> Callable[[], str]:
    def check() -> str:
        check_writable_dir(Path(path))
        return f"{os.path.abspath(path)} is writable"

    return check


def _check_ray(address: str | None) -> Callable[[], str]:
    """Whether Ray Train is installed (optional) and, given an address, reachable."""

    def check() -> str:
        if importlib.util.find_spec("ray") is None:
            raise SkippedCheck(f"Ray not installed (optional: {RAY_EXTRA})")
        from .launch.ray_launcher import connect, import_ray

        ray = import_ray()
        if address is None:
            return f"Ray {ray.__version__} installed (pass --ray-address to check a cluster)"
        cluster = connect(address)
        return (
            f"Ray {ray.__version__}: cluster at {cluster.address} reached, {cluster.nodes} "
            f"node(s), {cluster.cpus:g} CPUs, {cluster.gpus:g} GPUs"
        )

    return check


class SkippedCheck(Exception):
    """A doctor check that does not apply here (an optional extra not installed)."""


def cmd_doctor(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    def torch_build() -> str:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
        return f"torch {torch.__version__} ({build}), Python {sys.version.split()[0]}"

    def gloo() -> str:
        if not dist.is_gloo_available():
            raise RuntimeError("gloo backend missing from this torch build")
        return "gloo backend available"

    def gpus() -> str:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        nccl = "NCCL available" if dist.is_nccl_available() else "no NCCL (CPU-only is fine)"
        return f"{count} CUDA GPU(s) seen; {nccl}"

    checks: list[tuple[str, Callable[[], str]]] = [
        ("torch", torch_build),
        ("gloo", gloo),
        ("gpus", gpus),
        ("cores", lambda: f"{available_cores()} CPU cores available"),
        ("ports", _check_port),
        ("run directory", _check_runs_dir(args.runs_dir)),
        ("all-reduce", _check_allreduce),
        ("ray", _check_ray(args.ray_address)),
    ]
    failed = skipped = 0
    for name, check in checks:
        try:
            print(f"PASS  {name:<14} {check()}", flush=True)
        except SkippedCheck as why:
            skipped += 1
            print(f"SKIP  {name:<14} {why}", flush=True)
        except Exception as err:  # a doctor reports every failure, whatever it is
            failed += 1
            print(f"FAIL  {name:<14} {type(err).__name__}: {str(err).splitlines()[0]}", flush=True)
    also = f", {skipped} skipped" if skipped else ""
    print(f"{len(checks) - failed - skipped} passed, {failed} failed{also}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``adt``; returns the exit code (0 ok, 1 training failure, 2 usage/config error)."""
    args = _parser().parse_args(argv)
    command = {
        "train": cmd_train,
        "plan": cmd_plan,
        "simulate": cmd_simulate,
        "report": cmd_report,
        "doctor": cmd_doctor,
        "watch": cmd_watch,
    }[args.command]
    try:
        return command(args)
    except ConfigError as err:
        print(f"adt: error: {err}", file=sys.stderr)
        return 2
    except (WorkerFailedError, RendezvousFailedError) as err:
        print(f"adt: training failed: {err}", file=sys.stderr)
        return 1
    except SimulationError as err:
        print(f"adt: simulation failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("adt: interrupted; every worker was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench.gpu_all``: what needs a GPU, measured and checked in one run (meant to take
under 8 minutes on one host of up to 8 GPUs).

Throughput (the GPT-style decoder of ``bench.gpu`` at bf16): tokens/s, TFLOP/s per GPU and MFU
for DDP on one GPU and on all, FSDP on all, each of those with ``compile`` on; the scaling
efficiency from one GPU to all (goal >= 90%) and MFU on one GPU (goal >= 40%).

Checks (a small decoder, seconds each): the NCCL process group, bf16 autocast and fp16 with its
gradient scaler train (finite, falling loss), deterministic mode gives bitwise-equal weights
twice, FSDP equals DDP in fp32, FSDP's bf16 mixed precision ends near DDP's.

One table; exit 0 when every check passed, 1 when one failed, 2 without CUDA. ``--cpu`` runs
the same code on CPU (tiny model, 2 gloo workers, compile through the quick ``aot_eager``
backend, fp16 skipped) to check the script itself: its figures mean nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import torch

from bench import gpu

Check = tuple[str, bool | None, str]  # name, passed (None: skipped), detail


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="check the script on CPU (tiny model)")
    p.add_argument("--nodes", type=int, default=None, help="'all GPUs' (default: every GPU)")
    p.add_argument("--peak-tflops", type=float, default=gpu.H100_BF16_DENSE_TFLOPS)
    return p.parse_args(argv)


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless 1 ("1 GPU", "2 GPUs")."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def gpus(n: int) -> str:
    return count(n, "GPU")


def throughput(args: argparse.Namespace) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """The throughput rows (name, bench.gpu's figures) and the 'all GPUs' worker count. On a
    host of one GPU the DDP rows on all GPUs would repeat the one-GPU rows: not run again."""
    base = gpu.parse(["--cpu"] if args.cpu else [])
    base.peak_tflops = args.peak_tflops
    every = args.nodes or (2 if args.cpu else torch.cuda.device_count())
    compiled: bool | str = "aot_eager" if args.cpu else True
    variants: list[tuple[str, int, dict[str, Any]]] = [
        ("DDP, 1 GPU", 1, {}),
        ("DDP, 1 GPU, compile", 1, {"compile": compiled}),
    ]
    if every > 1:
        variants += [
            (f"DDP, {gpus(every)}", every, {}),
            (f"DDP, {gpus(every)}, compile", every, {"compile": compiled}),
        ]
    variants += [
        (f"FSDP, {gpus(every)}", every, {"strategy": "fsdp"}),
        (f"FSDP, {gpus(every)}, compile", every, {"strategy": "fsdp", "compile": compiled}),
    ]
    if not args.cpu:  # host memory holds the shards; on CPUs it does anyway (refused there)
        offload = {"strategy": "fsdp", "cpu_offload": True}
        variants.append((f"FSDP, {gpus(every)}, CPU offload", every, offload))
    rows = []
    for name, nodes, settings in variants:
        base.nodes = nodes
        rows.append((name, gpu.run(base, **settings)))
    return rows, every


def small_run(args: argparse.Namespace, nodes: int, **settings: Any) -> Any:
    """A small decoder trained for a few dozen steps (the checks' workload)."""
    from ai_distributed_training import DistributedTraining

    model = {"model_name": "check", "architecture": "transformer", "d_model": 64, "layers": 2}
    data = {"samples": 512, "seq_len": 32, "vocab_size": 128}
    defaults = {
        "epochs": 2,
        "batch_size": 32,
        "validation_split": 0.0,
        "runs_dir": None,
        "use_gpus": not args.cpu,
        "learning_rate": 3e-3,
    }
    return DistributedTraining(**{**defaults, **settings}).train_distributed(model, data, nodes)


def checks(args: argparse.Namespace, rows: dict[str, dict[str, Any]], every: int) -> list[Check]:
    """The correctness checks that need a GPU (on CPU: their code path)."""
    out: list[Check] = []
    uniform = math.log(128)  # the small decoder's loss before it learns anything

    def learned(name: str, **settings: Any) -> None:
        r = small_run(args, every, **settings)
        ok = math.isfinite(r["final_loss"]) and r["final_loss"] < 0.9 * uniform
        out.append((name, ok, f"final loss {r['final_loss']:.3f} (uniform {uniform:.3f})"))

    ddp = rows[f"DDP, {gpus(every)}"]["result"]
    backend = "gloo" if args.cpu else "nccl"
    ok = ddp["backend"] == backend and ddp["weights_in_sync"]
    out.append((f"{backend} process group", ok, f"{count(every, 'worker')}, weights in sync: {ok}"))
    learned("bf16 autocast", precision="bf16")
    if args.cpu:
        out.append(("fp16 + gradient scaler", None, "needs a GPU"))
    else:
        learned("fp16 + gradient scaler", precision="fp16")
    first, again = (small_run(args, every, deterministic=True, seed=3) for _ in range(2))
    same = all(
        torch.equal(a, b)
        for a, b in zip(
            first.model.state_dict().values(), again.model.state_dict().values(), strict=True
        )
    )
    out.append(("deterministic: same weights twice", same, "bitwise" if same else "differ"))
    fp32 = {"precision": "fp32"}
    fsdp, plain = small_run(args, every, strategy="fsdp", **fp32), small_run(args, every, **fp32)
    gap = max(
        (a - b).abs().max().item()
        for a, b in zip(
            fsdp.model.state_dict().values(), plain.model.state_dict().values(), strict=True
        )
    )
    out.append(("FSDP == DDP (fp32)", gap < 1e-4, f"largest weight difference {gap:.1e}"))
    mixed, reference = rows[f"FSDP, {gpus(every)}"], rows[f"DDP, {gpus(every)}"]
    rel = abs(mixed["final_loss"] - reference["final_loss"]) / reference["final_loss"]
    precision = "fp32" if args.cpu else "bf16"
    out.append(
        (f"FSDP {precision} mixed precision ~ DDP", rel < 0.02, f"final loss {rel:.2%} apart")
    )
    return out


def report(rows: list[tuple[str, dict[str, Any]]], every: int, found: list[Check]) -> None:
    print(
        f"{'variant':30} {'tokens/s':>11} {'TFLOP/s/GPU':>11} {'MFU':>6} {'wall s':>7} "
        f"{'final loss':>10}"
    )
    for name, r in rows:
        print(
            f"{name:30} {r['tokens_per_s']:11.0f} {r['tflops_per_gpu']:11.1f} {r['mfu']:6.1%} "
            f"{r['wall_time_s']:7.1f} {r['final_loss']:10.4f}"
        )
    by = dict(rows)
    one, all_ = by["DDP, 1 GPU"]["tokens_per_s"], by[f"DDP, {gpus(every)}"]["tokens_per_s"]
    scaling = (
        f"scaling efficiency 1 -> {every} GPUs (DDP): {all_ / (every * one):.1%} (goal >= 90%)"
        if every > 1
        else "scaling efficiency: needs 2 or more GPUs (one here)"
    )
    print(f"{scaling}; MFU on one GPU: {by['DDP, 1 GPU']['mfu']:.1%} (goal >= 40%)")
    print("(wall s: the whole call; compile's cost is the wall difference of a compile row)")
    for name, ok, detail in found:
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        print(f"{status}  {name:36} {detail}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA GPU here: the GPU checks were not run (use --cpu to check the script)")
        return 2
    started = time.perf_counter()
    rows, every = throughput(args)
    found = checks(args, dict(rows), every)
    report(rows, every, found)
    print(f"({time.perf_counter() - started:.0f} s in all)")
    return 1 if any(ok is False for _, ok, _ in found) else 0


if __name__ == "__main__":
    sys.exit(main())

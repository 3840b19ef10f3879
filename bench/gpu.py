"""``python -m bench.gpu``: the GPU variant of the throughput benchmark (issue #8).

A GPT-style decoder (the built-in ``transformer`` architecture: pre-norm blocks, SDPA causal
attention) trains on synthetic tokens in bf16 through ``train_distributed(use_gpus=True)``.
The table gives tokens/s and model FLOP utilisation (MFU): the model's training FLOPs per
sequence (forward + backward, attention included, counted by torch's ``FlopCounterMode`` on the
meta device, as ``plan`` counts them) times sequences/s, over the GPUs' peak dense bf16 FLOP/s
(989 TFLOP/s per H100 or H200 SXM; ``--peak-tflops`` for another part).

Without CUDA it says so and exits 2: no figure is invented. ``--cpu`` runs the same code on a
tiny model on CPU (fp32, gloo) to check the script itself; its MFU is against ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from ai_distributed_training import DistributedTraining
from ai_distributed_training.data import resolve_data
from ai_distributed_training.models import resolve_model
from ai_distributed_training.planner.counting import count_source

H100_BF16_DENSE_TFLOPS = 989.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=None, help="workers (default: every GPU)")
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--batch", type=int, default=32, help="global batch, sequences")
    p.add_argument("--samples", type=int, default=6400, help="sequences per epoch")
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS, help="per GPU")
    p.add_argument("--cpu", action="store_true", help="check the script on CPU (tiny model)")
    args = p.parse_args(argv)
    if args.cpu:  # seconds on two cores: the code path, not a figure
        args.d_model, args.layers, args.heads, args.seq_len = 32, 2, 4, 16
        args.vocab, args.batch, args.samples = 64, 16, 64
    return args


def run(args: argparse.Namespace, **settings: Any) -> dict[str, Any]:
    """Train once (``settings`` added to the benchmark's, e.g. ``strategy="fsdp"``,
    ``compile=True``); returns tokens/s, training FLOPs per sequence, MFU, the call's wall
    time and the result itself."""
    model = {
        "model_name": "gpt",
        "architecture": "transformer",
        "d_model": args.d_model,
        "layers": args.layers,
        "heads": args.heads,
    }
    data = {"samples": args.samples, "seq_len": args.seq_len, "vocab_size": args.vocab}
    gpu = not args.cpu
    nodes = args.nodes or (torch.cuda.device_count() if gpu else 1)
    defaults = {
        "epochs": 1,
        "batch_size": args.batch,
        "validation_split": 0.0,
        "runs_dir": None,
        "use_gpus": gpu,
        "precision": "bf16" if gpu else "fp32",
    }
    trainer = DistributedTraining(**{**defaults, **settings})
    result = trainer.train_distributed(model, data, nodes=nodes)
    source = resolve_data(data)
    flops_per_sequence = count_source(resolve_model(model), source.info).flops_per_sample
    sequences_per_s = result["samples_per_second"]
    achieved = flops_per_sequence * sequences_per_s
    return {
        "nodes": nodes,
        "flops_per_sequence": flops_per_sequence,
        "sequences_per_s": sequences_per_s,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "tokens_per_s": sequences_per_s * args.seq_len,
        "tflops_per_gpu": achieved / nodes / 1e12,
        "mfu": achieved / (nodes * args.peak_tflops * 1e12),
        "final_loss": result["final_loss"],
        "wall_time_s": result["wall_time_s"],
        "result": result,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA GPU here: the GPU benchmark was not run (use --cpu to check the script)")
        return 2
    out = run(args)
    print(f"{'nodes':>5} {'tokens/s':>12} {'TFLOP/s/GPU':>12} {'MFU':>6} {'final loss':>10}")
    print(
        f"{out['nodes']:5d} {out['tokens_per_s']:12.0f} {out['tflops_per_gpu']:12.1f} "
        f"{out['mfu']:6.1%} {out['final_loss']:10.4f}"
    )
    print(f"(MFU against {args.peak_tflops:g} TFLOP/s dense bf16 per GPU; goal >= 40%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

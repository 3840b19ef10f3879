"""``python -m bench.kill_stress``: kill workers at random steps and moments, many times, and
check that every restarted job ends bitwise where the uninterrupted one did.

Two jobs, each run once uninterrupted and then with a chain of SIGKILLs (one per attempt, on
a random rank, at a random step, after a random delay into that step, so a kill lands in
forward, backward, an all-reduce or a checkpoint save):

* ``builtin``: the built-in step, an MLP with dropout (per-rank random streams matter);
* ``custom``: a ``train_step`` GAN as users write it: two models and two Adam optimizers,
  dict samples, ``ctx.backward((sum, count))``, noise from torch's global generator.

The suite runs a short chain of each (``tests/distributed/test_kill_stress.py``); this
command runs longer ones and prints one row per job: kills that landed, restarts, mismatches.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ai_distributed_training import DistributedTraining

SAMPLES, BATCH, EPOCHS, CHECKPOINT_EVERY = 2000, 64, 3, 5
STEPS = EPOCHS * -(-SAMPLES // BATCH)  # 32 steps an epoch (the last one smaller), 96 in all


class RealSamples(Dataset[dict[str, torch.Tensor]]):
    """The GAN's "real" data: dict samples, as a user's Dataset often returns."""

    def __init__(self) -> None:
        self.x = torch.randn(SAMPLES, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 1

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"real": self.x[i]}


def generator() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 8))


def discriminator() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))


def gan_step(ctx: Any, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Alternating D and G updates; losses as (sum, count) pairs; global-generator noise."""
    real = batch["real"]
    g, d = ctx.models["G"], ctx.models["D"]
    fake = g(torch.randn(len(real), 4))
    truth = torch.cat([torch.ones(len(real), 1), torch.zeros(len(real), 1)])
    d_sum = F.binary_cross_entropy_with_logits(
        d(torch.cat([real, fake.detach()])), truth, reduction="sum"
    )
    ctx.backward((d_sum, 2 * len(real)))
    ctx.step("D")
    g_sum = F.binary_cross_entropy_with_logits(d(fake), torch.ones(len(real), 1), reduction="sum")
    ctx.backward((g_sum, len(real)))
    ctx.step("G")
    return {"d_loss": (d_sum, 2 * len(real)), "g_loss": (g_sum, len(real))}


def _builtin() -> tuple[Any, Any, dict[str, Any]]:
    model = {"model_name": "mlp", "hidden_sizes": [64, 64], "dropout": 0.1}
    return model, {"samples": SAMPLES, "features": 16}, {"validation_split": 0.0}


def _custom() -> tuple[Any, Any, dict[str, Any]]:
    models = {"G": generator, "D": discriminator}
    return models, RealSamples(), {"train_step": gan_step, "optimizer": "adam"}


JOBS: dict[str, Callable[[], tuple[Any, Any, dict[str, Any]]]] = {
    "builtin": _builtin,
    "custom": _custom,
}


def kill_chain(kills: int, rng: random.Random, *, nodes: int, max_delay_s: float) -> list[dict]:
    """``kills`` faults, one per attempt, at increasing random steps spread over the job (each
    attempt resumes at or before the previous kill, so each is reached), on random ranks,
    after random delays of up to ``max_delay_s`` into the step."""
    gap = max(2, (STEPS - 8) // kills)
    steps = [2 + i * gap + rng.randrange(gap - 1) for i in range(kills)]
    return [
        {
            "kind": "kill",
            "rank": rng.randrange(nodes),
            "step": step,
            "attempt": attempt,
            "delay_s": round(rng.uniform(0.0, max_delay_s), 4),
        }
        for attempt, step in enumerate(steps)
    ]


def run(
    job: str, kills: int, seed: int, nodes: int = 2, max_delay_s: float = 0.05
) -> dict[str, Any]:
    """One job uninterrupted, then with a chain of ``kills`` kills; the comparison."""
    model, data, settings = JOBS[job]()
    trainer = DistributedTraining(
        epochs=EPOCHS,
        batch_size=BATCH,
        checkpoint_every=CHECKPOINT_EVERY,
        runs_dir=None,
        **settings,
    )
    clean = trainer.train_distributed(model, data, nodes=nodes)
    faults = kill_chain(kills, random.Random(seed), nodes=nodes, max_delay_s=max_delay_s)
    with tempfile.TemporaryDirectory() as ckpt:
        killed = trainer.train_distributed(
            model,
            data,
            nodes=nodes,
            checkpoint_dir=ckpt,
            max_restarts=kills,
            fault_injection=faults,
        )
    a, b = clean.model.state_dict(), killed.model.state_dict()
    differ = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    return {
        "job": job,
        "faults": faults,
        "restarts": killed["restarts"],
        "differ": differ,
        "steps": (clean["steps"], killed["steps"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=12, help="kills per chain (one job)")
    parser.add_argument("--chains", type=int, default=3, help="chains per kind of step")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"{'job':8} {'chain':>5} {'kills':>5} {'restarts':>8} {'mismatched':>10} {'s':>6}")
    failed = 0
    for chain in range(args.chains):
        for job in JOBS:
            started = time.perf_counter()
            out = run(job, args.kills, args.seed * 1000 + chain, args.nodes)
            failed += bool(out["differ"]) or out["steps"][0] != out["steps"][1]
            print(
                f"{job:8} {chain:5d} {len(out['faults']):5d} {out['restarts']:8d} "
                f"{len(out['differ']):10d} {time.perf_counter() - started:6.1f}",
                flush=True,
            )
            if out["differ"]:
                print(f"  faults: {out['faults']}\n  max |diff|: {out['differ']}")
    print(f"{failed} chain(s) ended differently from the uninterrupted run")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The cluster simulation (ai_distributed_training.simulate): the job's own step posed as ranks
of a large world on torch's fake backend, checked against a real gloo run of the same steps."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ai_distributed_training import DistributedTraining
from ai_distributed_training.errors import ConfigError
from ai_distributed_training.planner.profiles import PRESETS
from ai_distributed_training.simulate import measure, simulate

MODEL = {"model_name": "sim", "hidden_sizes": [512, 512]}
DATA = {"samples": 4000, "features": 256}
CPU = PRESETS["cpu-cluster-25g"]


def test_world_64_fsdp_reports_ranks_memory_and_padding() -> None:
    settings = DistributedTraining(strategy="fsdp", batch_size=256).resolve_settings()
    sim = simulate(MODEL, DATA, settings, nodes=[64], hardware=CPU)
    assert [r.facts.rank for r in sim.ranks] == [0, 63]  # the default: first, last (equal shares)
    for r in sim.ranks:
        assert r.facts.error is None
        assert r.facts.samples == [4, 4]  # 256 over 64 ranks, each step
        assert r.facts.memory["total"] > r.facts.memory["parameters"] > 0
        assert {name for name, _, _ in r.facts.collectives} >= {"all_gather", "reduce_scatter"}
        assert r.time is not None and r.time.step_s > 0
    # The output layer's 10 rows and its bias over 64 ranks: the last ranks hold padding only.
    first, last = sim.rank(64, 0).facts, sim.rank(64, 63).facts
    assert first.padding_only_parameters == 0 and last.padding_only_parameters == 2
    assert last.padding_bytes > first.padding_bytes
    assert any("rank 63: 2 parameter(s) have fewer rows" in p for p in sim.problems)
    # Rank 0 alone writes the whole tensors of a sharded checkpoint (none here: all sharded).
    assert first.checkpoint_bytes > 0 and last.checkpoint_bytes > 0
    assert "world" in sim.table()


def test_2d_parallel_ranks_of_a_group_all_simulate() -> None:
    """fsdp+tp at 16 workers (4 groups of 4): the last rank, a tensor-parallel peer that
    counts no sums in a real run, steps like the first; its collectives run on groups of 4."""
    gpt = {"model_name": "g", "architecture": "transformer", "d_model": 64, "heads": 4}
    tokens = {"samples": 256, "seq_len": 16, "vocab_size": 128}
    trainer = DistributedTraining(strategy="fsdp+tp", tp_size=4, batch_size=16)
    sim = trainer.simulate(gpt, tokens, nodes=16, hardware=CPU, ranks=[0, 15])
    for r in sim.ranks:
        assert r.facts.error is None, r.facts.error
        assert r.facts.samples == [4, 4]  # 16 over 4 data-parallel groups
        assert {size for _, _, size in r.facts.collectives} == {4, 16}  # + the loss count
    assert not sim.problems


def test_a_world_size_the_checks_refuse_is_reported() -> None:
    settings = DistributedTraining(strategy="ddp", batch_size=16).resolve_settings()
    sim = simulate(MODEL, DATA, settings, nodes=[8, 32], ranks=[0], hardware=CPU)
    assert sim.world_sizes == [8] and "batch_size=16" in sim.refused[32]
    assert any(p.startswith("world 32: refused") for p in sim.problems)


def test_bad_ranks_refused() -> None:
    settings = DistributedTraining(strategy="ddp").resolve_settings()
    with pytest.raises(ConfigError, match=r"ranks 0\.\.7"):
        simulate(MODEL, DATA, settings, nodes=[8], ranks=[8], hardware=CPU)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_simulation_matches_a_real_run(strategy: str) -> None:
    """At 2 workers, every rank: the simulated collectives equal a real gloo run's (same
    counter, bytes and group sizes), and the simulated peak memory is within 15% of the peak
    resident memory the real step added (bench/simulate_accuracy.py: 2 and 4 workers, tp)."""
    settings = DistributedTraining(strategy=strategy, batch_size=256).resolve_settings()
    model = {"model_name": "sim", "hidden_sizes": [2048, 2048, 2048]}
    data = {"samples": 4000, "features": 1024}
    sim = simulate(model, data, settings, nodes=[2], ranks=[0, 1], hardware=CPU)
    real = measure(model, data, settings, nodes=2)
    for rank in (0, 1):
        simulated, measured = sim.rank(2, rank).facts, real[rank]
        assert simulated.error is None and measured.error is None
        assert Counter(simulated.collectives) == Counter(measured.collectives)
        assert measured.measured_bytes is not None
        ratio = simulated.memory["total"] / measured.measured_bytes
        assert 0.85 <= ratio <= 1.15, ratio


def test_plan_with_simulated_memory(tmp_path: Path) -> None:
    """``plan(simulate=True)`` takes each size's memory from the simulation (a size the job
    refuses keeps the formulas'); ``adt simulate`` prints the table and writes the page."""
    trainer = DistributedTraining(batch_size=64)
    plan = trainer.plan(MODEL, DATA, nodes=[2, 128], hardware=CPU, simulate=True)
    by_nodes = {r.nodes: r for r in plan.rows}
    fsdp = trainer.simulate(MODEL, DATA, [2], CPU, ranks=[0, 1], strategy="fsdp")
    assert by_nodes[2].simulated and by_nodes[2].memory_fsdp_bytes == fsdp.needed_bytes()[2]
    assert by_nodes[1].simulated and not by_nodes[128].simulated  # 64 < 128: refused
    assert "(simulated)" in plan.table()
    out = tmp_path / "sim"
    done = subprocess.run(
        [sys.executable, "-m", "ai_distributed_training.cli", "simulate", "--nodes", "16",
         "--ranks", "0,15", "--hardware", "cpu-cluster-25g", "--set", "strategy=fsdp",
         "--set", "model.hidden_sizes=[64]", "--set", "data.samples=512",
         "--set", "batch_size=32", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "    16    15" in done.stdout and "assumed: communication" in done.stdout
    assert {p.name for p in out.iterdir()} == {
        "simulation.html",
        "simulation.png",
        "simulation.json",
    }
    bad = subprocess.run(
        [sys.executable, "-m", "ai_distributed_training.cli", "simulate", "--nodes", "4",
         "--ranks", "9"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "ranks 0..3" in bad.stderr

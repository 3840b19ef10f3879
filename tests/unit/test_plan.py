"""The planner's arithmetic: counts, partition, memory and time formulas, recommendation,
output formats and input errors. Hardware is a fixed profile here (no calibration)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ai_distributed_training import DistributedTraining
from ai_distributed_training.errors import ConfigError
from ai_distributed_training.planner.counting import count_model
from ai_distributed_training.planner.profiles import (
    PRESETS,
    HardwareProfile,
    Link,
    load_profile,
    save_profile,
)
from ai_distributed_training.training.sharding import (
    epoch_order,
    global_batch,
    num_steps,
    rank_share,
)

MLP = {"model_name": "m", "hidden_sizes": [512, 512]}


def profile(**changes: Any) -> HardwareProfile:
    """A cluster of 4-slot GPU hosts with round numbers."""
    values: dict[str, Any] = {
        "name": "test",
        "kind": "gpu",
        "slots_per_host": 4,
        "slot_flops": 1e12,
        "step_overhead_s": 1e-3,
        "optimizer_s_per_parameter": 0.0,
        "worker_baseline_bytes": 1000,
        "memory_bytes": 10**12,
        "intra_host": Link(latency_s=1e-5, bandwidth_bytes_per_s=1e11),
        "inter_host": Link(latency_s=1e-4, bandwidth_bytes_per_s=1e10),
    }
    return HardwareProfile(**{**values, **changes})


def plan(
    hw: HardwareProfile, nodes: Any = (2, 4, 8), threshold: float = 0.8, **settings: Any
) -> Any:
    settings = {"batch_size": 256, "validation_split": 0.0, **settings}
    return DistributedTraining(**settings).plan(
        MLP, {"samples": 1000, "features": 128}, nodes, hardware=hw, threshold=threshold
    )


def test_count_model_flops_parameters_and_activations() -> None:
    net = nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU())
    net.append(nn.Linear(512, 2))
    count = count_model(net, (128,), "classification")
    assert count.parameters == 329_730
    # forward 2 x MACs; backward: weight grads for all layers, input grads for all but the first
    macs = 128 * 512 + 512 * 512 + 512 * 2
    assert count.flops_per_sample == 2 * macs + 2 * macs + 2 * (macs - 128 * 512)
    # activations grow with the batch; the 1.3 MB of weights a Linear saves must not count
    assert 4 * (128 + 512 + 512) <= count.activation_bytes_per_sample < 10_000
    assert count.largest_block_parameters == 512 * 512 + 512


def test_partition_is_the_trainers_own() -> None:
    rows = plan(profile(), nodes=(3, 7), batch_size=64).rows
    for row in rows:
        n = row.nodes
        order = epoch_order(1000, 0, 0)
        shares = [
            sum(
                len(rank_share(global_batch(order, s, 64), r, n))
                for s in range(num_steps(1000, 64))
            )
            for r in range(n)
        ]
        assert row.per_worker_samples_per_epoch == max(shares)
        assert sum(shares) == 1000
        assert row.per_worker_batch == len(rank_share(torch.arange(64), 0, n))
        assert row.steps_per_epoch == 16


def test_memory_formulas_and_strategy_choice() -> None:
    hw = profile()
    row = {r.nodes: r for r in plan(hw).rows}[4]
    params = 329_730
    activations = count_model(
        nn.Sequential(
            nn.Flatten(),
            nn.Linear(128, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 2),
        ),
        (128,),
        "classification",
    ).activation_bytes_per_sample
    # GPU: no dataset in GPU memory; AdamW: 16 bytes per parameter replicated
    assert row.memory_ddp_bytes == int(1000 + 16 * params + 64 * activations)
    # FSDP: each parameter's rows split 4 ways, rounded up (the last layer's 2 rows: 1 each)
    shard = 128 * 128 + 128 + 128 * 512 + 128 + 1 * 512 + 1
    assert row.memory_fsdp_bytes == int(
        1000 + 16 * shard + 8 * (512 * 512 + 512) + 64 * activations
    )
    assert row.strategy == "ddp" and row.memory_per_worker_bytes == row.memory_ddp_bytes
    sgd = {r.nodes: r for r in plan(hw, optimizer="sgd").rows}[4]
    assert row.memory_ddp_bytes - sgd.memory_ddp_bytes == 4 * params
    tight = plan(profile(memory_bytes=(row.memory_ddp_bytes + row.memory_fsdp_bytes) // 2))
    assert {r.nodes: r for r in tight.rows}[4].strategy == "fsdp"
    assert {r.strategy for r in plan(profile(memory_bytes=1000)).rows} == {"none fits"}


def test_step_time_is_compute_plus_ring_allreduce() -> None:
    hw = profile()
    rows = {r.nodes: r for r in plan(hw).rows}
    flops = count_model(
        nn.Sequential(
            nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 2)
        ),
        (128,),
        "classification",
    ).flops_per_sample
    grad_bytes = 4 * 329_730
    for n, link in ((4, hw.intra_host), (8, hw.inter_host)):  # 8 workers span 2 hosts
        row = rows[n]
        assert row.compute_s == pytest.approx(256 / n * flops / 1e12 + 1e-3)
        ring = (
            2 * (n - 1) * link.latency_s + 2 * (n - 1) / n * grad_bytes / link.bandwidth_bytes_per_s
        )
        assert row.communication_s == pytest.approx(ring)
        assert row.samples_per_second == pytest.approx(256 / (row.compute_s + ring))
    assert rows[1].communication_s == 0 and rows[1].efficiency == 1
    assert rows[8].hosts == 2 and rows[4].hosts == 1
    assert rows[4].efficiency == pytest.approx(
        rows[4].samples_per_second / (4 * rows[1].samples_per_second)
    )


def test_recommendation_is_the_fastest_efficient_count() -> None:
    free = plan(
        profile(
            intra_host=Link(latency_s=0, bandwidth_bytes_per_s=1e20),
            inter_host=Link(latency_s=0, bandwidth_bytes_per_s=1e20),
            step_overhead_s=0.0,
        ),
        threshold=0.5,
    )
    assert free.recommended.nodes == 8  # no communication cost: more is faster
    slow = plan(profile(inter_host=Link(latency_s=1.0, bandwidth_bytes_per_s=1e3)))
    assert slow.recommended.nodes <= 4  # crossing hosts costs seconds
    assert sum(r.recommended for r in slow.rows) == 1


def test_json_table_and_plot(tmp_path: Path) -> None:
    result = plan(PRESETS["h100-nvlink-400g"], nodes=None)
    rows = result.to_json()
    assert [r["nodes"] for r in rows] == [2**i for i in range(11)]
    for key in ("nodes", "samples_per_second", "efficiency", "memory_per_worker_bytes", "strategy"):
        assert all(key in r for r in rows), key
    json.dumps(rows)
    assert "recommended" in result.table() and "1024" in result.table()
    png = result.plot(tmp_path / "plan.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"nodes": 0}, "nodes=0"),
        ({"nodes": [2, -1]}, "nodes=[2, -1]"),
        ({"threshold": 1.5}, "threshold=1.5"),
        ({"hardware": "tpu-pod"}, "hardware='tpu-pod'"),
        ({"batch_sise": 3}, "batch_sise"),
    ],
)
def test_bad_plan_inputs_are_named(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        DistributedTraining().plan(MLP, {"samples": 100, "features": 4}, **kwargs)


def test_profiles_round_trip_and_unknown_fields_are_named(tmp_path: Path) -> None:
    path = save_profile(PRESETS["a100-ib-200g"], tmp_path / "hw.yaml")
    assert load_profile(path) == PRESETS["a100-ib-200g"]
    path.write_text(path.read_text() + "gpus_per_host: 8\n")
    with pytest.raises(ConfigError, match="gpus_per_host"):
        load_profile(path)


def test_this_machines_plan_times_the_model_without_changing_the_profile() -> None:
    hw = profile(kind="cpu", hosts=1, slots_per_host=2, slot_flops=1e18, step_overhead_s=0.0)
    result = plan(hw, nodes=(2,))
    assert result.hardware == hw  # what --save-hardware writes: no model-specific rate in it
    # compute comes from the model's own timed steps, not the profile's absurd 1e18 FLOP/s
    assert result.rows[0].compute_s > 1000 * 256 * result.model.flops_per_sample / 1e18


FAKE_FSDP = """
import json, sys, torch, torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.testing._internal.distributed.fake_pg import FakeStore
world = int(sys.argv[1])
dist.init_process_group("fake", store=FakeStore(), rank=world - 1, world_size=world)
net = nn.Sequential(
    nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 2)
)
for layer in (net[0], net[2], net[4]):
    fully_shard(layer)
fully_shard(net)
padded = sum(p._local_tensor.untyped_storage().nbytes() // 4 for p in net.parameters())
print(json.dumps(padded))
"""


@pytest.mark.parametrize("world", [4, 4096])
def test_the_fsdp_memory_formula_counts_dim0_padding_as_fsdp2_allocates_it(world: int) -> None:
    """FSDP2 pads dim 0 of each parameter to a multiple of the world size: the formula's shard
    per rank is what FSDP2 allocates on the last rank of a world of 4 and of 4,096 (the fake
    process group: one process posing as that rank), where an even split would be ~80 values
    and FSDP2 allocates 1,155."""
    import json
    import subprocess
    import sys

    net = nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU())
    net.append(nn.Linear(512, 2))
    count = count_model(net, (128,), "classification")
    proc = subprocess.run(
        [sys.executable, "-c", FAKE_FSDP, str(world)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    allocated = json.loads(proc.stdout.strip().splitlines()[-1])
    assert count.sharded_parameters(world) == allocated
    if world == 4096:  # every parameter's rows padded to one per rank: 14x the even share
        assert allocated > 10 * count.parameters / world


def test_tensor_parallel_memory_is_predicted_for_a_model_with_a_plan() -> None:
    gpt = {"model_name": "gpt", "architecture": "transformer", "d_model": 64, "layers": 2,
           "heads": 4}  # fmt: skip
    tokens = {"samples": 256, "seq_len": 8, "vocab_size": 32}
    result = DistributedTraining(batch_size=32, optimizer="sgd").plan(
        gpt, tokens, (1, 4), hardware=profile()
    )
    one, four = result.rows
    assert one.memory_tp_bytes == one.memory_ddp_bytes  # one worker holds it all
    # At 4: the blocks' Linear weights a quarter each; embeddings, norms, head, rowwise biases
    # whole: 12 bytes (weight, gradient, momentum) for each parameter held.
    block = 4 * (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64) + 4 * 64  # each layer's
    split = 3 * (64 * 64 + 64) // 4 + 64 * 64 // 4 + 64 + (64 * 256 + 256) // 4 + 256 * 64 // 4
    held = result.model.parameters - 2 * block + 2 * (split + 64 + 4 * 64)
    assert four.memory_tp_bytes - one.memory_tp_bytes == 12 * (held - result.model.parameters)
    assert "TP mem/wkr" in result.table()
    assert plan(profile()).rows[0].memory_tp_bytes is None  # an MLP has no plan
    assert "TP mem/wkr" not in plan(profile()).table()

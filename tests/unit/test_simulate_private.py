"""The private torch APIs the simulation stands on (simulate/private.py), each checked on its
own: when a torch upgrade moves or changes one, this fails naming it, before any simulation
gives a wrong figure."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ai_distributed_training.simulate import private
from ai_distributed_training.simulate.private import (
    CollectiveCounter,
    ScalarReads,
    fake_tensors,
    join_fake_group,
    leave_group,
    memory_tracker,
    peak_memory,
)


def test_the_private_names_are_where_the_simulation_takes_them() -> None:
    from torch.distributed.tensor import DTensor

    propagator = DTensor._op_dispatcher.sharding_propagator
    for holder, name in [
        (propagator.propagate_op_sharding, "cache_clear"),
        (propagator._propagate_tensor_meta_cached, "cache_clear"),
        (torch._C, "_clear_DTensor_sharding_propagator_cache"),
        (dist.distributed_c10d, "_resolve_process_group"),
        (private.MemTracker, "get_tracker_snapshot"),
        (private.MemTracker, "track_external"),
        (private.MemTracker, "_pre_fw_hook"),
        (dist, "GradBucket"),
    ]:
        assert hasattr(holder, name), f"torch moved {name} (from {holder!r})"


def test_a_fake_world_of_4096_runs_collectives_that_copy_and_count() -> None:
    """Rank 17 of 4,096 in this process: an all-gather fills every slot with this rank's
    tensor (the values the fake backend gives back: torch's checks that read them agree), an
    object collective round-trips, the counter sees each call with its bytes and group."""
    join_fake_group(17, 4096)
    try:
        assert (dist.get_rank(), dist.get_world_size()) == (17, 4096)
        counter = CollectiveCounter()
        with counter:
            out = torch.empty(4096 * 2)
            dist.all_gather_into_tensor(out, torch.tensor([3.0, 4.0]))
            dist.all_reduce(torch.ones(8))
        assert torch.equal(out.view(4096, 2)[4095], torch.tensor([3.0, 4.0]))
        assert counter.calls == [("all_gather", 4096 * 2 * 4, 4096), ("all_reduce", 32, 4096)]
        objects: list[object] = [None] * 4096
        dist.all_gather_object(objects, {"rank": 17})
        assert objects[0] == {"rank": 17}
    finally:
        leave_group()
    assert not dist.is_initialized()


def test_fake_tensors_read_as_one_and_real_ones_as_themselves() -> None:
    with fake_tensors() as mode, ScalarReads():
        big = torch.empty(1 << 40, dtype=torch.uint8)  # a terabyte: shapes only
        assert big.numel() == 1 << 40 and float(big.float().sum()) == 1.0
        del mode
    with ScalarReads():
        assert int(torch.tensor(7)) == 7  # DDP's and object collectives' sizes stay true


def test_the_memory_tracker_sorts_a_step_by_category() -> None:
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.Adam(model.parameters())
    tracker = memory_tracker([model], [optimizer])
    with tracker:
        model(torch.randn(64, 256)).sum().backward()
        optimizer.step()
    peak = peak_memory(tracker)
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert peak["parameters"] == weights and peak["optimizer state"] >= 2 * weights
    assert peak["total"] >= sum(v for k, v in peak.items() if k != "total") > 0


def test_lazy_chunks_are_the_chunks_fsdp_makes() -> None:
    """The simulation's stand-in for FSDP2's ``_chunk_with_empty`` (chunks made when read)
    gives the same views: same shapes, strides and storage, empty ones past the last."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param

    original = _fsdp_param._chunk_with_empty
    with private.lazy_fsdp_chunks():
        assert _fsdp_param._chunk_with_empty is private._LazyChunks
    assert _fsdp_param._chunk_with_empty is original
    for rows, n in [(10, 64), (4096, 4096), (32000, 4096), (7, 3), (1, 8), (100, 7)]:
        t = torch.randn(rows, 3)
        expected, lazy = original(t, n, 0), private._LazyChunks(t, n, 0)
        assert len(expected) == len(lazy) == n
        for i in (0, 1, n // 2, n - 1, -1):
            a, b = expected[i], lazy[i]
            assert (a.shape, a.stride()) == (b.shape, b.stride())
            assert a.numel() == 0 or a.data_ptr() == b.data_ptr()

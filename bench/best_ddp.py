"""Baseline: the best hand-written torchrun + DDP script we know for the reference workload:
batches sliced straight from tensors (no DataLoader), each rank pinned to its own core, fused
AdamW, one 25 MB DDP bucket used as the gradient's storage. The same math as the library's
(the global batch split in contiguous shares, the loss scaled to the global mean).

Run as ``torchrun --standalone --nproc-per-node N bench/best_ddp.py``.
"""

from __future__ import annotations

import gc
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from ai_distributed_training.training.sharding import epoch_order, global_batch, rank_share
from bench import workload

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
cpus = sorted(os.sched_getaffinity(0))
os.sched_setaffinity(0, cpus[rank * len(cpus) // world : (rank + 1) * len(cpus) // world] or cpus)
torch.set_num_threads(max(1, len(cpus) // world))
x, y = workload.data()
net = DistributedDataParallel(workload.model(), bucket_cap_mb=25, gradient_as_bucket_view=True)
opt = torch.optim.AdamW(net.parameters(), lr=workload.LR, fused=True)
if rank == 0:
    workload.mark_loop_start()
started = time.perf_counter()
loss_sum = torch.zeros((), dtype=torch.float64)
for epoch in range(workload.EPOCHS):
    order = epoch_order(len(x), workload.SEED, epoch)
    loss_sum = torch.zeros((), dtype=torch.float64)
    for step in range(-(-len(x) // workload.GLOBAL_BATCH)):
        batch = global_batch(order, step, workload.GLOBAL_BATCH)
        idx = rank_share(batch, rank, world)
        local = F.cross_entropy(net(x[idx]), y[idx], reduction="sum")
        opt.zero_grad(set_to_none=True)
        (local * world / len(batch)).backward()
        opt.step()
        loss_sum += local.detach().double()
elapsed = time.perf_counter() - started
dist.all_reduce(loss_sum)
if rank == 0:
    print(
        json.dumps(
            {
                "samples_per_second": workload.EPOCHS * len(x) / elapsed,
                "train_time_s": elapsed,
                "final_loss": float(loss_sum) / len(x),
            }
        )
    )
del net, opt
gc.collect()
dist.destroy_process_group()

"""Baseline for the DataLoader workload: hand-written torchrun + DDP + DistributedSampler +
``DataLoader(num_workers=2)``. Run as ``torchrun --standalone --nproc-per-node 2 <this>``."""

from __future__ import annotations

import gc
import json
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from bench import loader_workload as w

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(max(1, torch.get_num_threads() // world))
dataset = w.AugmentedImages()
sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, seed=w.SEED)
loader = DataLoader(
    dataset, batch_size=w.GLOBAL_BATCH // world, sampler=sampler, num_workers=w.NUM_WORKERS
)
net = DistributedDataParallel(w.model())
opt = torch.optim.AdamW(net.parameters(), lr=w.LR)
started = time.perf_counter()
totals = torch.zeros(2, dtype=torch.float64)
for epoch in range(w.EPOCHS):
    sampler.set_epoch(epoch)
    totals = torch.zeros(2, dtype=torch.float64)
    for xb, yb in loader:
        loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        totals += torch.tensor([float(loss) * len(yb), len(yb)], dtype=torch.float64)
elapsed = time.perf_counter() - started
dist.all_reduce(totals)
if rank == 0:
    print(
        json.dumps(
            {
                "samples_per_second": w.EPOCHS * len(dataset) / elapsed,
                "final_loss": float(totals[0] / totals[1]),
            }
        )
    )
del net, opt
gc.collect()
dist.destroy_process_group()

"""Baseline: the hand-written torchrun + DDP + DataLoader/DistributedSampler script.

Run as ``torchrun --standalone --nproc-per-node N bench/ddp_baseline.py``.
"""

from __future__ import annotations

import gc
import json
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from bench import workload

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(max(1, torch.get_num_threads() // world))
dataset = TensorDataset(*workload.data())
sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, seed=workload.SEED)
loader = DataLoader(dataset, batch_size=workload.GLOBAL_BATCH // world, sampler=sampler)
net = DistributedDataParallel(workload.model())
opt = torch.optim.AdamW(net.parameters(), lr=workload.LR)
if rank == 0:
    workload.mark_loop_start()
started = time.perf_counter()
totals = torch.zeros(2, dtype=torch.float64)
for epoch in range(workload.EPOCHS):
    sampler.set_epoch(epoch)
    totals = torch.zeros(2, dtype=torch.float64)  # loss sum, samples: the epoch's mean loss
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
                "samples_per_second": workload.EPOCHS * len(dataset) / elapsed,
                "train_time_s": elapsed,
                "final_loss": float(totals[0] / totals[1]),
            }
        )
    )
# Without this, a DDP reducer alive at destroy_process_group aborts a rank at exit now and then
# ("terminate called without an active exception"; seen here on 2 ranks too).
del net, opt
gc.collect()
dist.destroy_process_group()

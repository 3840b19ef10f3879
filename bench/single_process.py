"""Baseline: ONE process using every core, batches sliced straight from tensors."""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F

from ai_distributed_training.training.sharding import epoch_order
from bench import workload

x, y = workload.data()
net = workload.model()
opt = torch.optim.AdamW(net.parameters(), lr=workload.LR)
workload.mark_loop_start()
started, epoch_loss = time.perf_counter(), 0.0
for epoch in range(workload.EPOCHS):
    order = epoch_order(len(x), workload.SEED, epoch)  # the library's order: same math
    loss_sum = torch.zeros((), dtype=torch.float64)
    for i in range(0, len(x), workload.GLOBAL_BATCH):
        idx = order[i : i + workload.GLOBAL_BATCH]
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach().double() * len(idx)
    epoch_loss = float(loss_sum) / len(x)
elapsed = time.perf_counter() - started
print(
    json.dumps(
        {
            "samples_per_second": workload.EPOCHS * len(x) / elapsed,
            "train_time_s": elapsed,
            "final_loss": epoch_loss,
        }
    )
)

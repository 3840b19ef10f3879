"""A small GAN on a 2-D toy distribution, with your own training step: a generator and a
discriminator, two optimizers, alternating updates. The library still shards the data, moves
batches, checkpoints both models and both optimizers, and restarts a failed worker."""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ai_distributed_training import DistributedTraining


class Ring(Dataset):
    """Points near a circle of radius 2: what the generator learns to produce."""

    def __init__(self, n=4096):
        g = torch.Generator().manual_seed(0)
        angle = torch.rand(n, generator=g) * 2 * math.pi
        radius = 2 + 0.1 * torch.randn(n, generator=g)
        self.points = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)

    def __len__(self):
        return len(self.points)

    def __getitem__(self, i):
        return self.points[i]


def generator():
    return nn.Sequential(
        nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
    )


def discriminator():
    return nn.Sequential(nn.Linear(2, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))


def adam(params):
    return torch.optim.Adam(params, lr=2e-3, betas=(0.5, 0.999))  # the usual GAN setting


def gan_step(ctx, real):
    """One step: the discriminator learns real from fake, then the generator learns to fool it."""
    G, D = ctx.models["G"], ctx.models["D"]
    noise = torch.randn(len(real), 8, generator=ctx.generator, device=ctx.device)
    fake = G(noise)
    scores = D(torch.cat([real, fake.detach()]))
    truth = torch.cat([torch.ones(len(real), 1), torch.zeros(len(real), 1)]).to(ctx.device)
    d_loss = F.binary_cross_entropy_with_logits(scores, truth)
    ctx.backward(d_loss)
    ctx.step("D")
    g_loss = F.binary_cross_entropy_with_logits(D(fake), torch.ones_like(scores[: len(real)]))
    ctx.backward(g_loss)
    ctx.step("G")
    radius_error = (fake.detach().norm(dim=1) - 2).abs().mean()
    return {"d_loss": d_loss, "g_loss": g_loss, "radius_error": radius_error}


if True:  # the workers never re-run this script: no __main__ guard needed
    result = DistributedTraining().train_distributed(
        {"G": generator, "D": discriminator},
        Ring(),
        nodes=2,
        train_step=gan_step,
        optimizer={"G": adam, "D": adam},
        batch_size=128,
        epochs=16,
        runs_dir=None,
    )
    G = result.model["G"]
    samples = G(torch.randn(1000, 8, generator=torch.Generator().manual_seed(0))).detach()
    distance = (samples.norm(dim=1) - 2).abs().mean()
    print(f"mean distance of generated points from the circle: {distance:.3f}")
    print(f"last epoch: {result['history'][-1]}")

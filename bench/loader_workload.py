"""The DataLoader workload: images whose ``__getitem__`` is CPU-heavy (a random affine warp and
a blur per read, ~1 ms), a small CNN. Shared by our run and the hand-written baseline."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

SAMPLES, SIDE, CLASSES = 4096, 28, 2
GLOBAL_BATCH, EPOCHS, LR, SEED, NUM_WORKERS = 128, 2, 1e-3, 0, 2
BLURS = 100  # passes of a 3x3 blur per read: the "decoding and augmenting" cost


class AugmentedImages(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random images; the label says whether the left half is brighter than the right."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(SEED)
        self.images = torch.rand(SAMPLES, 1, SIDE, SIDE, generator=g)
        half = SIDE // 2
        left, right = (
            self.images[..., :half].mean((1, 2, 3)),
            self.images[..., half:].mean((1, 2, 3)),
        )
        self.labels = (left > right).long()
        self.kernel = torch.full((1, 1, 3, 3), 1 / 9)

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        angle = float(torch.empty(()).uniform_(-0.2, 0.2))
        theta = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0],
                              [math.sin(angle), math.cos(angle), 0.0]])[None]  # fmt: skip
        image = self.images[i][None]
        grid = F.affine_grid(theta, list(image.shape), align_corners=False)
        image = F.grid_sample(image, grid, align_corners=False)
        for _ in range(BLURS):
            image = F.conv2d(image, self.kernel, padding=1)
        return image[0], self.labels[i]


def model() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
        nn.Flatten(), nn.Linear(8 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, CLASSES),
    )  # fmt: skip

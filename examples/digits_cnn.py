"""A small CNN on scikit-learn's bundled 8x8 digit images, read through the user's own
DataLoader: a Dataset that augments each image in __getitem__ (random shifts and noise), loaded
by two background processes per worker. The DataLoader's batch_size is the global batch."""

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ai_distributed_training import DistributedTraining


class Digits(Dataset):
    """1797 images of 8x8 pixels; each read shifts the image by up to a pixel and adds noise."""

    def __init__(self):
        digits = load_digits()
        self.images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
        self.labels = torch.tensor(digits.target)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        dx, dy = torch.randint(-1, 2, (2,)).tolist()
        image = torch.roll(self.images[i], shifts=(dy, dx), dims=(0, 1))
        image = image + 0.05 * torch.randn_like(image)
        return image.unsqueeze(0), self.labels[i]  # (channel, height, width), class


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


loader = DataLoader(Digits(), batch_size=64, shuffle=True, num_workers=2)
result = DistributedTraining().train_distributed(
    cnn, loader, nodes=2, epochs=8, learning_rate=3e-3, runs_dir=None
)
print(f"validation accuracy {result['metrics']['val_accuracy']:.3f} on {result['data']}")

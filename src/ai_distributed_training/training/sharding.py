"""How samples are split into epochs, global batches and per-rank shares: pure functions.

The rules (every rank computes the same thing from the same seed, no communication needed):

* A fixed, seeded split puts ``floor(n * validation_split)`` samples in validation.
* Each epoch shuffles the training samples with a generator seeded by ``(seed, epoch)``.
* The shuffled order is cut into GLOBAL batches of ``batch_size``; the last one may be smaller.
  Nothing is dropped and nothing is padded, so every training sample is used exactly once per
  epoch (unlike ``DistributedSampler``, which pads with duplicates).
* Each global batch is split into ``world_size`` contiguous shares whose sizes differ by at most
  one. A rank's share may be empty when the last batch is smaller than ``world_size``.

The loop scales each rank's SUM of losses by ``world_size / global batch`` so that DDP's average
of gradients equals the gradient of the mean loss over the whole global batch, whatever the split.
"""

from __future__ import annotations

import numpy as np
import torch


def _generator(*entropy: int) -> torch.Generator:
    seed = int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def train_val_split(
    n: int, validation_split: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into (train, validation) index tensors, fixed by ``seed``."""
    n_val = int(n * validation_split)
    perm = torch.randperm(n, generator=_generator(seed, 0x5E1)) if n_val else torch.arange(n)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def epoch_order(n_train: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of training positions ``0..n_train-1`` for ``epoch``."""
    return torch.randperm(n_train, generator=_generator(seed, epoch))


def num_steps(n_train: int, batch_size: int, drop_last: bool = False) -> int:
    """Optimizer steps per epoch: the last global batch may be partial, and is dropped only
    with ``drop_last``."""
    return n_train // batch_size if drop_last else -(-n_train // batch_size)


def smallest_share(n_train: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """The fewest samples any rank gets in any step of an epoch (0: an empty share)."""
    smallest = batch_size // world_size if n_train >= batch_size else n_train // world_size
    last = n_train % batch_size
    if last and not drop_last and n_train > batch_size:
        smallest = min(smallest, last // world_size)
    return smallest


def global_batch(order: torch.Tensor, step: int, batch_size: int) -> torch.Tensor:
    """Positions in the global batch number ``step`` of an epoch's ``order``."""
    return order[step * batch_size : (step + 1) * batch_size]


def shard_bounds(length: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of ``rank``'s contiguous share of ``length`` items (sizes differ by
    at most one)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is outside 0..{world_size - 1}")
    base, extra = divmod(length, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def rank_share(items: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """``rank``'s contiguous share of ``items`` (see :func:`shard_bounds`)."""
    start, stop = shard_bounds(len(items), rank, world_size)
    return items[start:stop]


def loss_scale(global_count: float, world_size: int) -> float:
    """Factor turning a rank's SUM of per-item losses into its part of the global mean.

    DDP averages gradients over ``world_size`` ranks, so each rank back-propagates
    ``sum_of_its_losses * world_size / global_count``; the average over ranks is then exactly
    ``sum_of_all_losses / global_count``, the global-batch mean, even for unequal shares.
    ``global_count``: the global batch's samples, or its counted items (e.g. valid tokens).
    """
    return world_size / global_count

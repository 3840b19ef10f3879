"""Structured batches for the loop tests: ragged token sequences as dict samples, a plain torch
language model, a tiny Hugging Face GPT-2, and the hand-computed global-mean reference.

Module-level functions, so ``debug_launcher`` can run them on real gloo ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ai_distributed_training.config import TrainingSettings
from ai_distributed_training.config.sections import sections_of
from ai_distributed_training.data.loading import DatasetReader, LoaderOptions
from ai_distributed_training.training.context import RankContext, RankData
from ai_distributed_training.training.loop import train
from ai_distributed_training.training.sharding import epoch_order, global_batch
from ai_distributed_training.training.strategies import DDPStrategy, Strategy

VOCAB, SEQUENCES, BATCH = 16, 24, 8
#: Very different valid-token counts: rank shares of a global batch differ several-fold.
LENGTHS = [2, 15, 3, 14, 2, 16, 4, 13] * 3


class RaggedTokens(Dataset[dict[str, torch.Tensor]]):
    """Dict samples ``{"input_ids", "labels"}`` of different lengths (labels = next token)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(7)
        self.rows = [torch.randint(0, VOCAB, (n + 1,), generator=g) for n in LENGTHS]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.rows[i]
        return {"input_ids": row[:-1], "labels": row[1:]}


def pad(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad to the batch's longest sequence; padded positions get label -100."""
    pad_ids = nn.utils.rnn.pad_sequence([it["input_ids"] for it in items], batch_first=True)
    labels = [it["labels"] for it in items]
    pad_labels = nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100)
    mask = (pad_labels != -100).long()
    return {"input_ids": pad_ids, "attention_mask": mask, "labels": pad_labels}


class TinyLM(nn.Module):
    """``forward(input_ids)`` -> logits ``(N, T, V)``: labels are not its argument."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(VOCAB, 8), nn.Linear(8, VOCAB)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(input_ids)))


def tiny_lm() -> nn.Module:
    torch.manual_seed(0)
    return TinyLM()


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=32, bos_token_id=0,
        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


SETTINGS = TrainingSettings(
    epochs=1, batch_size=BATCH, optimizer="sgd", learning_rate=0.5, momentum=0.0,
    validation_split=0.0, seed=0,
)  # fmt: skip


def ragged_data() -> RankData:
    reader = DatasetReader(RaggedTokens(), LoaderOptions(collate_fn=pad))
    empty = torch.zeros(0, dtype=torch.long)
    return RankData(
        reader=reader,
        task="classification",
        train_idx=torch.arange(SEQUENCES),
        val_reader=reader,
        val_idx=empty,
    )


def weights_after(
    build: Callable[[], nn.Module], strategy: Strategy, **update: Any
) -> dict[str, torch.Tensor]:
    """The full weights after one epoch of ``train()`` on the ragged data."""
    model = build()
    settings = SETTINGS.model_copy(update=update)
    train(model, ragged_data(), RankContext.of(sections_of(settings), strategy=strategy))
    return strategy.full_state_dict(model)


def token_mean_reference() -> dict[str, torch.Tensor]:
    """Plain SGD on the mean loss over every valid token of each global batch, by hand."""
    model, data = tiny_lm(), RaggedTokens()
    optimizer = torch.optim.SGD(model.parameters(), lr=SETTINGS.learning_rate)
    order = epoch_order(SEQUENCES, SETTINGS.seed, 0)
    for step in range(SEQUENCES // BATCH):
        batch = pad([data[int(i)] for i in global_batch(order, step, BATCH)])
        logits = model(batch["input_ids"])
        loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())  # -100 ignored
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def naive_token_mean(outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each micro-batch's own token mean, as peers average it (weighted by samples here)."""
    return F.cross_entropy(outputs.flatten(0, 1), batch["labels"].flatten())


def ragged_cases() -> dict[str, dict[str, torch.Tensor]]:
    """On each rank of a debug_launcher job: the weights of every case, by name."""
    from ai_distributed_training.training.strategies.fsdp import FSDPStrategy

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    cpu = torch.device("cpu")
    out = {}
    for accumulation in (1, 2):
        out[f"lm/accumulate{accumulation}"] = weights_after(
            tiny_lm, DDPStrategy(rank, world, cpu), gradient_accumulation_steps=accumulation
        )
        out[f"gpt2/accumulate{accumulation}"] = weights_after(
            tiny_gpt2, DDPStrategy(rank, world, cpu), gradient_accumulation_steps=accumulation
        )
    out["naive"] = weights_after(tiny_lm, DDPStrategy(rank, world, cpu), loss_fn=naive_token_mean)
    fsdp = FSDPStrategy(rank, world, cpu, blocks=["GPT2Block"])
    out["gpt2/fsdp"] = weights_after(tiny_gpt2, fsdp)
    return out


def max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest relative difference of any weight tensor (by norm)."""
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp(min=1e-12)) for k in b)


class NoisyRecords(Dataset[dict[str, torch.Tensor]]):
    """Dict samples whose ``__getitem__`` augments with random noise; the label is whether the
    features' sum is positive."""

    def __init__(self, n: int = 480) -> None:
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(n, 6, generator=g)
        self.ids = torch.randint(0, 5, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.x[i] + 0.05 * torch.randn(6)
        return {"x": x, "ids": self.ids[i], "labels": (self.x[i].sum() > 0).long()}


class RecordsNet(nn.Module):
    """Two named inputs, dropout (so the resumed RNG streams matter)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.net = nn.Sequential(nn.Linear(9, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, self.embed(ids)], dim=1))


# --- custom training steps ------------------------------------------------------------------------


def distill_step(ctx: Any, batch: Any) -> dict[str, Any]:
    """A batch-additive step: a frozen teacher's predictions, a student learning them."""
    x, y = batch
    with torch.no_grad():
        target = ctx.models["teacher"](x)
    out = ctx.models["student"](x)
    loss = F.mse_loss(out, target) + F.cross_entropy(out, y)
    ctx.backward(loss)
    ctx.step("student")
    return {"loss": loss}


def teacher_and_student() -> nn.Module:
    from ai_distributed_training.models import Models

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2)).requires_grad_(False)
    return Models({"teacher": teacher, "student": nn.Linear(8, 2)})


def custom_weights(world: int, step: Callable[..., Any] = distill_step) -> dict[str, torch.Tensor]:
    """The student's weights after ``train()`` with a train_step on this rank of ``world``."""
    from tests.helpers import rank_data

    rank = torch.distributed.get_rank() if world > 1 else 0
    strategy = DDPStrategy(rank, world, torch.device("cpu"))
    settings = TrainingSettings(epochs=2, batch_size=50, learning_rate=0.05, train_step=step)
    model = teacher_and_student()
    train(model, rank_data(), RankContext.of(sections_of(settings), strategy=strategy))
    weights = strategy.full_state_dict(model)
    strategy.close()
    return weights


def on_this_rank() -> dict[str, torch.Tensor]:
    return custom_weights(torch.distributed.get_world_size())


def uneven_step(ctx: Any, batch: Any, model: str = "student") -> dict[str, Any]:
    """Steps ``model`` on rank 0 only: the others' models would silently drift apart."""
    x, y = batch
    loss = F.cross_entropy(ctx.models[model](x), y)
    ctx.backward(loss)
    if ctx.rank == 0:
        ctx.step(model)
    return {"loss": loss}


def mismatch_message() -> str:
    """On each rank: train with :func:`uneven_step`; the error's message (or 'no error')."""
    try:
        custom_weights(torch.distributed.get_world_size(), uneven_step)
    except Exception as err:  # the error every rank raises
        return f"{type(err).__name__}: {err}"
    return "no error"


def gan_generator() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 8))


def gan_discriminator() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))


def gan_step(ctx: Any, batch: Any) -> dict[str, Any]:
    """Alternating updates of two models with two optimizers; noise from ctx.generator."""
    real = batch[0]
    G, D = ctx.models["G"], ctx.models["D"]
    fake = G(torch.randn(len(real), 4, generator=ctx.generator))
    scores = D(torch.cat([real, fake.detach()]))
    truth = torch.cat([torch.ones(len(real), 1), torch.zeros(len(real), 1)])
    d_loss = F.binary_cross_entropy_with_logits(scores, truth)
    ctx.backward(d_loss)
    ctx.step("D")
    g_loss = F.binary_cross_entropy_with_logits(D(fake), torch.ones(len(real), 1))
    ctx.backward(g_loss)
    ctx.step("G")
    return {"d_loss": d_loss, "g_loss": g_loss}


def gan_fsdp_resume_is_bitwise(directory: str) -> bool:
    """On each rank of a debug_launcher job: a GAN (two models, two optimizers) under FSDP with
    mid-epoch checkpoints, then again from the oldest mid-epoch one; whether both end alike."""
    from pathlib import Path

    from ai_distributed_training.models import Models
    from ai_distributed_training.training.checkpoint import list_checkpoints, load_checkpoint
    from ai_distributed_training.training.resume import Checkpointer
    from ai_distributed_training.training.strategies.fsdp import FSDPStrategy
    from tests.helpers import rank_data, same_tensors

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    settings = TrainingSettings(
        epochs=2, batch_size=64, checkpoint_every=2, train_step=fsdp_gan_step, optimizer="adam"
    )

    def run(resume: dict[str, Any] | None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = Models({"G": nn.Linear(4, 8), "D": nn.Linear(8, 1)})
        strategy = FSDPStrategy(rank, world, torch.device("cpu"), blocks=[])
        checkpointer = Checkpointer(
            Path(directory), writes=rank == 0, keep=20, config={}, every=settings.checkpoint_every
        )
        ctx = RankContext.of(sections_of(settings), strategy=strategy, checkpointer=checkpointer)
        train(model, rank_data(), ctx, resume)
        return strategy.full_state_dict(model)

    full = run(None)
    mid = [
        p for p in list_checkpoints(Path(directory)) if load_checkpoint(p)["loop"]["step_in_epoch"]
    ]
    return same_tensors(full, run(load_checkpoint(mid[-1])))


def fsdp_gan_step(ctx: Any, batch: Any) -> dict[str, Any]:
    """:func:`gan_step` on rank_data's 8 features (the labels unused)."""
    return gan_step(ctx, (batch[0],))

"""A GPT-2-style Hugging Face model trained as a byte-level language model on real text: the
Python standard library's own sources. Dict batches, the model's own loss, a padding collate
function, two workers. Nothing is downloaded: the model is built from a config."""

import os
import sysconfig
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel

from ai_distributed_training import DistributedTraining

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class StdlibBytes(Dataset):
    """Lines of the standard library's sources as byte sequences of different lengths."""

    def __init__(self, files=("textwrap.py", "string.py", "shlex.py"), limit=3000):
        lines = []
        for name in files:
            text = (Path(sysconfig.get_paths()["stdlib"]) / name).read_bytes()
            lines += [line for line in text.splitlines() if len(line.strip()) > 8]
        self.lines = [line[:64] for line in lines[:limit]]

    def __len__(self):
        return len(self.lines)

    def __getitem__(self, i):
        ids = torch.tensor(list(self.lines[i]), dtype=torch.long)
        return {"input_ids": ids, "labels": ids}  # the model shifts labels itself


def pad(samples):
    """Pad to the longest sequence of the batch; padded labels are -100 (not learnt)."""
    longest = max(len(s["input_ids"]) for s in samples)
    ids = torch.zeros(len(samples), longest, dtype=torch.long)
    labels = torch.full((len(samples), longest), -100)
    mask = torch.zeros(len(samples), longest, dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = s["input_ids"], s["labels"], 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def byte_gpt2():
    config = GPT2Config(
        vocab_size=256,
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


result = DistributedTraining().train_distributed(
    byte_gpt2,
    StdlibBytes(),
    nodes=2,
    collate_fn=pad,
    epochs=3,
    batch_size=32,
    learning_rate=3e-3,
    runs_dir=None,
)
uniform = torch.log(torch.tensor(256.0))  # nats per byte of guessing uniformly
print(f"train loss {result['final_loss']:.3f} nats/byte (uniform guessing: {uniform:.3f})")
print(f"validation loss {result['metrics']['val_loss']:.3f}")

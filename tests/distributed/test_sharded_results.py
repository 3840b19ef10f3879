"""A model no process holds whole: FSDP builds it sharded, trains it, and exports it shard by
shard (result_weights='safetensors'); each worker's peak memory stays well below what holding
the full weights would add, the caller never builds it, and the export, loaded into a fresh
model in one process, computes what the sharded model computed. ``python -m
bench.sharded_memory`` runs the same at 503M parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ai_distributed_training import DistributedTraining
from ai_distributed_training.errors import ConfigError
from bench import sharded_memory

pytestmark = pytest.mark.distributed

WIDTH, LAYERS = 1024, 48  # 50M parameters, 201 MB in fp32; blocks of 4 MB


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict:
    runs = tmp_path_factory.mktemp("runs")
    return sharded_memory.measure(WIDTH, LAYERS, nodes=4, runs=str(runs))


def test_no_worker_holds_the_whole_model(measured: dict) -> None:
    full = measured["full_bytes"]
    for peak, tiny in zip(measured["peaks"], measured["tiny_peaks"], strict=True):
        # Its quarter of the weights and of the gradients, a block or two gathered, the
        # export's buffers: measured 0.85 x the full weights above a tiny model's worker
        # (DDP: 2 x, weights and gradients whole; a gathered result: 3 x).
        assert peak - tiny < 1.0 * full, (peak, tiny, full)
    # The caller checked the model on the meta device and loaded nothing back: its peak is a
    # tiny model's caller's (which may include building matplotlib's font cache for the
    # report, ~0.35 GB, when it is the session's first), not the full weights above it.
    assert measured["caller_peak"] < measured["tiny_caller_peak"] + 0.5 * full


def test_the_export_computes_what_the_sharded_model_computed(measured: dict) -> None:
    assert measured["export_val_loss"] == pytest.approx(measured["val_loss"], rel=1e-5)
    files = sorted(Path(measured["weights_dir"]).glob("*.safetensors"))
    with safe_open(str(files[0]), framework="pt") as f:  # Hugging Face layout: whole tensors
        assert tuple(f.get_slice("0.weight").get_shape()) == (WIDTH, WIDTH)


def test_result_model_loads_the_export_on_first_use(tmp_path: Path) -> None:
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    data = (x, (x[:, 0] > 0).long())
    trainer = DistributedTraining(epochs=1, batch_size=16, runs_dir=str(tmp_path))
    exported = trainer.train_distributed(
        sharded_memory.small_model, data, nodes=2, strategy="fsdp", result_weights="safetensors"
    )
    whole = trainer.train_distributed(sharded_memory.small_model, data, nodes=2, strategy="fsdp")
    assert exported["weights_dir"] and whole["weights_dir"] is None
    assert "_model" in vars(exported) and not isinstance(vars(exported)["_model"], torch.nn.Module)
    a, b = exported.model.state_dict(), whole.model.state_dict()  # loaded now
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_an_export_needs_a_directory() -> None:
    with pytest.raises(ConfigError, match=r"result_weights='safetensors'.*checkpoint_dir"):
        DistributedTraining(runs_dir=None, result_weights="safetensors").train_distributed(
            sharded_memory.small_model, {"samples": 64, "features": 6}, nodes=2
        )

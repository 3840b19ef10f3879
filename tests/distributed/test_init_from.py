"""init_from: a run starts from weights in files (safetensors, this library's checkpoints);
under FSDP each rank reads only the slices it holds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ai_distributed_training import DistributedTraining
from ai_distributed_training.launch.debug import debug_launcher

pytestmark = pytest.mark.distributed


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 256), nn.ReLU(), nn.Linear(256, 8))  # rows: 4 divides


def load_and_count(path: str) -> tuple[dict[str, torch.Tensor], int]:
    """On each rank: an FSDP model built sharded, loaded from ``path``; its weights gathered
    whole, and the bytes of tensor slices this rank read from the file."""
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader

    from ai_distributed_training.data import resolve_data
    from ai_distributed_training.models import resolve_model
    from ai_distributed_training.training.initial import load_initial_weights
    from ai_distributed_training.training.strategies.fsdp import FSDPStrategy

    read = [0]
    original = HuggingFaceStorageReader._process_read_request

    def counting(self, f, req, planner):  # type: ignore[no-untyped-def]
        read[0] += int(torch.Size(req.lengths).numel()) * 4  # float32 slices
        return original(self, f, req, planner)

    HuggingFaceStorageReader._process_read_request = counting  # type: ignore[method-assign]
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    strategy = FSDPStrategy(rank, world, torch.device("cpu"), blocks=["Linear"])
    info = resolve_data((torch.zeros(4, 6), torch.zeros(4, dtype=torch.long))).info
    model = strategy.wrap(strategy.build_model(resolve_model(net), info))
    load_initial_weights(model, Path(path))
    return strategy.full_state_dict(model), read[0]


def test_under_fsdp_each_rank_reads_only_its_slices(tmp_path: Path) -> None:
    torch.manual_seed(5)
    pretrained = net().state_dict()
    save_file(pretrained, tmp_path / "model.safetensors")
    ranks = debug_launcher(load_and_count, str(tmp_path / "model.safetensors"), num_processes=4)
    total = sum(t.numel() * 4 for t in pretrained.values())
    for weights, read in ranks:
        assert all(torch.equal(weights[k], pretrained[k]) for k in pretrained)
        assert read <= 0.3 * total  # its quarter of each tensor (dim 0), not the file


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_run_from_files_trains_as_from_the_same_weights_in_a_module(
    strategy: str, tmp_path: Path
) -> None:
    torch.manual_seed(5)
    start = net()
    save_file(start.state_dict(), tmp_path / "start.safetensors")
    x = torch.randn(128, 6, generator=torch.Generator().manual_seed(0))
    data = (x, (x[:, 0] > 0).long())
    trainer = DistributedTraining(epochs=2, batch_size=32, runs_dir=None, strategy=strategy)
    from_module = trainer.train_distributed(start, data, nodes=2)
    from_file = trainer.train_distributed(
        net, data, nodes=2, init_from=str(tmp_path / "start.safetensors")
    )
    a, b = from_module.model.state_dict(), from_file.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_run_starts_from_a_checkpoint_of_this_library(strategy: str, tmp_path: Path) -> None:
    """A step-*.pt (DDP) or step-*.dcp (FSDP) checkpoint's weights, the optimizer's left:
    the run ends where one from the same weights in a module does."""
    from ai_distributed_training.training.checkpoint import list_checkpoints

    x = torch.randn(128, 6, generator=torch.Generator().manual_seed(0))
    data = (x, (x[:, 0] > 0).long())
    trainer = DistributedTraining(epochs=1, batch_size=32, runs_dir=None, strategy=strategy)
    first = trainer.train_distributed(net, data, nodes=2, checkpoint_dir=str(tmp_path / "ckpt"))
    checkpoint = list_checkpoints(tmp_path / "ckpt")[0]
    assert checkpoint.suffix == (".dcp" if strategy == "fsdp" else ".pt")
    start = net()
    start.load_state_dict(first.model.state_dict())  # the checkpoint's: the run's last step
    from_module = trainer.train_distributed(start, data, nodes=2)
    from_file = trainer.train_distributed(net, data, nodes=2, init_from=str(checkpoint))
    a, b = from_module.model.state_dict(), from_file.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

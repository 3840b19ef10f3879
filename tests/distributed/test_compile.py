"""``compile``: torch.compile'd models keep the guarantees. The quick ``aot_eager`` backend
(graph capture and AOT autograd, no code generation) runs here; inductor's speed is measured
in ``make bench``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ai_distributed_training import ConfigError, DistributedTraining
from ai_distributed_training.launch.debug import debug_launcher
from ai_distributed_training.training.strategies import DDPStrategy
from tests.helpers import resume_is_bitwise, train_with

pytestmark = pytest.mark.distributed

BACKEND = "aot_eager"


def eager_compiled_fsdp() -> tuple[Any, ...]:
    """On each rank of a debug_launcher job: the weights after eager DDP, compiled DDP and
    compiled FSDP training, and how many graphs dynamo captured for each compiled run."""
    from torch._dynamo.utils import counters

    from ai_distributed_training.training.strategies.fsdp import FSDPStrategy

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    cpu = torch.device("cpu")
    eager = train_with(DDPStrategy(rank, world, cpu))
    graphs = []
    ddp = DDPStrategy(rank, world, cpu, compile_backend=BACKEND)
    counters.clear()
    compiled = train_with(ddp)
    graphs.append(counters["stats"]["unique_graphs"])
    assert ddp.replicas_identical(compiled)
    ddp.close()
    counters.clear()
    fsdp = train_with(FSDPStrategy(rank, world, cpu, blocks=["Linear"], compile_backend=BACKEND))
    graphs.append(counters["stats"]["unique_graphs"])
    return eager, compiled, fsdp, graphs


def test_compiled_ddp_and_fsdp_train_the_weights_eager_ddp_trains() -> None:
    eager, compiled, fsdp, graphs = debug_launcher(eager_compiled_fsdp, num_processes=2)[0]
    ddp_graphs, fsdp_graphs = graphs
    assert ddp_graphs >= 1  # the model really ran compiled (train and eval mode: 2 graphs)
    assert fsdp_graphs >= 2  # FSDP: each Linear block compiled on its own
    for name, expected in eager.items():
        torch.testing.assert_close(compiled[name], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fsdp[name], compiled[name], rtol=1e-4, atol=1e-5)


def test_a_compiled_model_resumes_bitwise(tmp_path: Path) -> None:
    resumed = debug_launcher(resume_is_bitwise, str(tmp_path), BACKEND, num_processes=2)
    assert resumed == [True, True]


def test_an_unknown_compile_backend_is_named_before_launch(no_launch: None) -> None:
    with pytest.raises(ConfigError, match=r"compile='inductr' is not a torch.compile backend"):
        DistributedTraining(compile="inductr").train_distributed(
            {"model_name": "m"}, {"samples": 64, "features": 4}, nodes=2
        )

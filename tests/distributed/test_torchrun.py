"""A user script run by torchrun, or by srun with a task per worker: train_distributed joins
that job in the script's own process instead of launching workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ai_distributed_training import DistributedTraining
from ai_distributed_training.host import allowed_cpus
from tests.helpers import same_tensors

pytestmark = pytest.mark.distributed

SCRIPT = """
import os, sys, torch
from ai_distributed_training import DistributedTraining
trainer = DistributedTraining(epochs=2, batch_size=32, seed=3, runs_dir=sys.argv[2])
result = trainer.train_distributed(
    {"model_name": "m", "hidden_sizes": [16]}, {"samples": 300, "features": 6}, nodes=5
)
keys = ("nodes_used", "final_loss", "run_dir", "steps", "status", "cpus_per_worker")
torch.save(
    {"weights": result.model.state_dict(), "result": {k: result[k] for k in keys},
     "pid": os.getpid()},
    os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"),
)
"""


def test_script_under_torchrun_joins_and_matches_our_launcher(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "train.py", str(tmp_path), str(tmp_path / "runs")]
    proc = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nodes=5 ignored" in proc.stderr  # the script's own nodes gives way to torchrun's
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["pid"] != ranks[1]["pid"]  # each rank trained in its own script process

    local = DistributedTraining(epochs=2, batch_size=32, seed=3, runs_dir=None).train_distributed(
        {"model_name": "m", "hidden_sizes": [16]}, {"samples": 300, "features": 6}, nodes=2
    )
    for out in ranks:  # every rank gets the full result, equal to our own launcher's
        assert same_tensors(out["weights"], local.model.state_dict())
        assert out["result"]["nodes_used"] == 2 and out["result"]["steps"] == local["steps"]
        assert out["result"]["final_loss"] == local["final_loss"]
        assert out["result"]["status"] == "distributed_trained"
        assert out["result"]["cpus_per_worker"] == [allowed_cpus()] * 2  # torchrun's placement
    run_dir = Path(ranks[0]["result"]["run_dir"])  # written by global rank 0 only
    assert (run_dir / "summary.json").is_file() and (run_dir / "config.yaml").is_file()
    assert ranks[1]["result"]["run_dir"] is None
    assert len(os.listdir(tmp_path / "runs")) == 1
    newest = max((run_dir / "checkpoints").glob("step-*.pt"))  # the resolved config, inputs too
    config = torch.load(newest, weights_only=True)["config"]
    assert config["model"]["hidden_sizes"] == [16] and config["batch_size"] == 32


def test_script_as_slurm_tasks_joins_like_under_torchrun(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    slurm = {
        "SLURM_JOB_ID": "777",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_NODELIST": "localhost",
    }
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    procs = [
        subprocess.Popen(
            [sys.executable, "train.py", str(tmp_path), str(tmp_path / "runs")],
            cwd=tmp_path,
            env={**base, **slurm, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [out["result"]["nodes_used"] for out in ranks] == [2, 2]
    assert same_tensors(ranks[0]["weights"], ranks[1]["weights"])


FSDP_SCRIPT = """
import sys, torch
from torch import nn
from ai_distributed_training import DistributedTraining
torch.manual_seed(0)
module = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
result = DistributedTraining(epochs=1, batch_size=32, runs_dir=None).train_distributed(
    module, {"samples": 200, "features": 6}, strategy="fsdp", fsdp_blocks=["Linear"]
)
assert result.model is module and type(module) is nn.Sequential  # trained in place, still plain
torch.save(module.state_dict(), sys.argv[1])
"""


def test_fsdp_under_torchrun_trains_the_callers_module_in_place(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(FSDP_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "train.py", str(tmp_path / "w.pt")]
    proc = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    local = DistributedTraining(epochs=1, batch_size=32, runs_dir=None).train_distributed(
        module, {"samples": 200, "features": 6}, nodes=2, strategy="fsdp", fsdp_blocks=["Linear"]
    )
    assert same_tensors(torch.load(tmp_path / "w.pt", weights_only=True), local.model.state_dict())

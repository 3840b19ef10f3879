"""Slurm's variables -> the job's layout (pure functions of an environment mapping)."""

from __future__ import annotations

import pytest

from ai_distributed_training.topology import BASE_PORT, expand_hostlist, slurm_job


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [
        ("node1", ["node1"]),
        ("gpu[01-03,07],cpu5", ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]),
        ("a[8-10]", ["a8", "a9", "a10"]),
        ("x-1,y[2]", ["x-1", "y2"]),
    ],
)
def test_expand_hostlist(hostlist: str, hosts: list[str]) -> None:
    assert expand_hostlist(hostlist) == hosts


def _env(**changes: str) -> dict[str, str]:
    env = {
        "SLURM_JOB_ID": "81234",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "0",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_NTASKS_PER_NODE": "1(x2)",
    }
    return {**env, **changes}


def test_one_task_per_host_launches_that_hosts_workers() -> None:
    job = slurm_job(_env())
    assert job is not None and not job.task_per_worker
    assert job.launcher_settings() == {
        "nnodes": 2,
        "node_rank": 1,
        "rdzv_endpoint": f"gpu07:{BASE_PORT + 234}",
    }


def test_one_task_per_worker_becomes_a_torchrun_style_rank() -> None:
    env = _env(SLURM_NTASKS="8", SLURM_PROCID="5", SLURM_LOCALID="1", SLURM_NTASKS_PER_NODE="4")
    job = slurm_job(env)
    assert job is not None and job.task_per_worker
    assert job.worker_environ() == {
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": str(BASE_PORT + 234),
    }


def test_outside_srun_or_single_task_is_an_ordinary_local_job() -> None:
    assert slurm_job({}) is None
    assert slurm_job(_env(SLURM_NTASKS="1", SLURM_NNODES="1")) is None  # e.g. sbatch's own shell
    assert slurm_job({k: v for k, v in _env().items() if k != "SLURM_PROCID"}) is None

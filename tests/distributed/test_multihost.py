"""Two real hosts: Linux network namespaces joined by a veth pair, one `adt train` in each.

Addresses exist only inside the namespaces this test creates; nothing else is contacted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ai_distributed_training import DistributedTraining
from tests.helpers import same_tensors

pytestmark = pytest.mark.distributed

ADDRS = ("192.168.231.1", "192.168.231.2")
MODEL, DATA = "{model_name: m, hidden_sizes: [16]}", "{samples: 400, features: 6}"
SETTINGS = {"epochs": 2, "batch_size": 32, "seed": 5}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _netns_reason() -> str | None:
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    return None


@pytest.fixture
def hosts() -> Iterator[tuple[str, str]]:
    """Two namespaces ("hosts") joined by a veth pair; removed afterwards."""
    reason = _netns_reason()
    if reason:
        pytest.skip(f"no separate hosts: {reason}")
    tag = f"adt{os.getpid() % 100000}"
    names = (f"{tag}a", f"{tag}b")
    try:
        for name in names:
            _ip("netns", "add", name)
        _ip("link", "add", f"{tag}va", "type", "veth", "peer", "name", f"{tag}vb")
        for name, dev, addr in zip(names, (f"{tag}va", f"{tag}vb"), ADDRS, strict=True):
            _ip("link", "set", dev, "netns", name)
            _ip("-n", name, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", name, "link", "set", dev, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _adt_on(host: str, node_rank: int, *extra: str) -> subprocess.Popen[str]:
    command = ["ip", "netns", "exec", host, sys.executable, "-m", "ai_distributed_training"]
    command += ["train", "--set", f"model={MODEL}", "--set", f"data={DATA}"]
    command += [arg for k, v in SETTINGS.items() for arg in ("--set", f"{k}={v}")]
    command += ["--nnodes", "2", "--node-rank", str(node_rank), "--local-addr", ADDRS[node_rank]]
    command += [*extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_hosts_of_two_workers_restart_on_both_after_a_kill_and_match_four_local_workers(
    hosts: tuple[str, str], tmp_path: Path
) -> None:
    """Two hosts of two workers each train as four local workers would, also through an
    elastic restart across hosts: both agents re-rendezvous, every rank resumes from the newest
    checkpoint in the shared checkpoint_dir, and every host's caller gets the weights."""
    # Rank 2 (2nd host) dies; the other ranks are busy at that moment, not failing: host 0's
    # agent re-rendezvouses for the other host's restart, which it does not count as its own.
    kill = "{kind: kill, rank: 2, step: 9}"
    busy = ", ".join(f"{{kind: hang, rank: {r}, step: 9}}" for r in (0, 1, 3))
    common = ["--nproc-per-node", "2", "--rdzv-endpoint", f"{ADDRS[0]}:29531", "--set",
              f"checkpoint_dir={tmp_path / 'ckpt'}", "--set", "checkpoint_every=4",
              "--set", "max_restarts=1", "--set", f"fault_injection=[{kill}, {busy}]"]  # fmt: skip
    procs = [
        _adt_on(host, i, *common, "--set", f"runs_dir={tmp_path / f'runs{i}'}")
        for i, host in enumerate(hosts)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "nodes_used=4" in out
    # One fault, one failure: no attempt that aborts on mismatched collectives afterwards.
    failures = "".join(err for _, err in outs).count("failed (exitcode")
    assert failures == 1, "\n".join(err[-3000:] for _, err in outs)
    local = DistributedTraining(runs_dir=None, **SETTINGS).train_distributed(
        {"model_name": "m", "hidden_sizes": [16]}, {"samples": 400, "features": 6}, nodes=4
    )
    events = ""
    for i in range(2):  # every host's caller gets the trained weights
        (run_dir,) = (tmp_path / f"runs{i}").iterdir()
        assert json.loads((run_dir / "summary.json").read_text())["restarts"] == 1
        events += (run_dir / "events.log").read_text()
        weights = torch.load(run_dir / "model.pt", weights_only=True)
        assert same_tensors(weights, local.model.state_dict())
    # Global rank 0 logs the job's events on its host, which a restart may change.
    assert "resuming at epoch 1, step 8" in events, events  # not from scratch


def test_a_host_that_never_joins_fails_the_job_within_the_timeout(
    hosts: tuple[str, str],
) -> None:
    started = time.monotonic()
    proc = _adt_on(
        hosts[0], 0, "--nproc-per-node", "1", "--rdzv-endpoint", f"{ADDRS[0]}:29532",
        "--rdzv-timeout", "5", "--set", "runs_dir=null",
    )  # fmt: skip
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "did not all join" in err and "rdzv_timeout_s=5" in err and "Traceback" not in err
    assert time.monotonic() - started < 40

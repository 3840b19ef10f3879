"""A failing, dead or hung worker stops the job fast, names the rank, leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ai_distributed_training import DistributedTraining, WorkerFailedError
from tests.conftest import worker_pids

pytestmark = pytest.mark.distributed

DATA = {"samples": 400, "features": 4}


class Faulty(nn.Module):
    """Misbehaves on one rank at its third training step: raise, die or hang."""

    def __init__(self, mode: str, stamp_file: str, rank: int = 1, step: int = 3) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.mode, self.stamp_file, self.rank, self.step = mode, stamp_file, rank, step
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and dist.get_rank() == self.rank:
            self.calls += 1
            if self.calls == self.step:
                Path(self.stamp_file).write_text(str(time.time()))
                if self.mode == "raise":
                    raise ValueError(f"boom on purpose at step {self.step}")
                if self.mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if self.mode == "hang":
                    time.sleep(3600)
        return self.lin(x)


def _fail(mode: str, tmp_path: Path, **settings: object) -> tuple[WorkerFailedError, float]:
    stamp = tmp_path / "fault-time"
    trainer = DistributedTraining(epochs=50, batch_size=8, max_restarts=0, **settings)
    with pytest.raises(WorkerFailedError) as info:
        trainer.train_distributed(Faulty(mode, str(stamp)), DATA, nodes=2)
    return info.value, time.time() - float(stamp.read_text())


def test_raising_worker_is_reported_with_rank_type_message_and_traceback(tmp_path: Path) -> None:
    err, seconds = _fail("raise", tmp_path)
    assert seconds < 10
    assert err.rank == 1
    assert "ValueError: boom on purpose at step 3" in err.first.message
    assert "in forward" in err.first.traceback and "raise ValueError" in err.first.traceback
    text = str(err)
    assert text.startswith("worker rank 1 failed (exit code 1): ValueError: boom on purpose")
    assert "traceback of rank 1" in text


def test_killed_worker_is_reported_with_its_signal(tmp_path: Path) -> None:
    err, seconds = _fail("kill", tmp_path)
    assert seconds < 10
    assert (err.rank, err.first.signal) == (1, "SIGKILL")
    assert "killed by SIGKILL" in str(err)


def test_hung_worker_fails_the_job_within_the_collective_timeout(tmp_path: Path) -> None:
    err, seconds = _fail("hang", tmp_path, collective_timeout_s=3.0)
    assert seconds < 3.0 + 7  # the timeout, plus time to stop every worker
    assert err.rank == 0 and "Timed out" in err.first.message
    assert "likely stuck): [1]" in str(err)


def test_ctrl_c_in_the_caller_stops_every_worker(tmp_path: Path) -> None:
    script = tmp_path / "long_job.py"
    script.write_text(
        textwrap.dedent("""
        from ai_distributed_training import DistributedTraining
        DistributedTraining(epochs=1000).train_distributed(
            {"model_name": "m"}, {"samples": 20000, "features": 32}, nodes=2)
    """)
    )
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(worker_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(worker_pids()) == 2, "the workers never started"
        time.sleep(2)  # let them get into training
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:  # never leave the job running, whatever failed above
            proc.kill()
            proc.communicate()
    assert time.monotonic() - sent < 10
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr
    assert worker_pids() == []


class CutErrorFile(nn.Module):
    """Rank 1 dies at its second training step leaving its error file cut (empty), as a
    worker SIGKILLed while ``@record`` wrote it does."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.calls = nn.Linear(4, 2), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and dist.get_rank() == 1:
            self.calls += 1
            if self.calls == 2:
                Path(os.environ["TORCHELASTIC_ERROR_FILE"]).write_text("")
                os._exit(1)
        return self.lin(x)


def test_a_worker_dead_while_writing_its_error_file_is_reported_not_a_json_error() -> None:
    """torch's reader raised JSONDecodeError on the cut file, ending the call with it."""
    with pytest.raises(WorkerFailedError) as info:
        DistributedTraining(epochs=1, batch_size=8, max_restarts=0).train_distributed(
            CutErrorFile(), DATA, nodes=2
        )
    assert info.value.rank == 1, str(info.value)
    assert "the process exited with code 1" in info.value.first.message

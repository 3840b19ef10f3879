"""Every worker pays for what it imports: heavy optional modules load only when used, and
the imports are built without the garbage collector's passes."""

from __future__ import annotations

import gc
import socket
import subprocess
import sys
import threading
import time

import pytest

from ai_distributed_training.launch.worker import collector_off_then_frozen
from ai_distributed_training.training.rank import wait_for_rank0_store

# Measured: torch.distributed.checkpoint (FSDP's checkpoints) adds ~0.5 s to a worker's start.
LAZY = ("torch.distributed.checkpoint", "torch.distributed.fsdp", "pyarrow")


def test_a_ddp_worker_does_not_import_fsdp_or_parquet_modules() -> None:
    code = (
        "import sys, ai_distributed_training.launch.worker, ai_distributed_training.api\n"
        f"print([m for m in {LAZY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_callers_checks_of_a_small_factory_model_import_no_compiler_modules() -> None:
    """The dry run of a factory's small model runs it for real: on the meta device its first
    operation imports sympy and torch._dynamo (1-2.5 s) in the caller, before any launch."""
    code = (
        "import sys, torch\n"
        "from ai_distributed_training.config import TrainingSettings\n"
        "from ai_distributed_training.prepare import prepare\n"
        "make = lambda: torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())\n"
        "prepare(make, {'samples': 100, 'features': 4}, TrainingSettings(runs_dir=None))\n"
        "print([m for m in ('sympy', 'torch._dynamo') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_other_ranks_wait_for_rank0_store_to_listen() -> None:
    """Rank 1 returns once rank 0 listens (not before), instead of meeting torch's 0.5-1.5 s
    retry back-off; rank 0, and ranks of a job whose agent serves the store, never wait."""
    port = _free_port()
    with pytest.MonkeyPatch.context() as env:  # undone before the leak check runs
        env.setenv("MASTER_ADDR", "127.0.0.1")
        env.setenv("MASTER_PORT", str(port))
        env.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
        _wait_for_a_late_rank0(port, env)


def _wait_for_a_late_rank0(port: int, env: pytest.MonkeyPatch) -> None:
    listening_at: list[float] = []
    server = socket.socket()

    def serve_later() -> None:
        time.sleep(0.3)
        listening_at.append(time.monotonic())  # before listen: no race with the waiter
        server.bind(("127.0.0.1", port))
        server.listen()

    thread = threading.Thread(target=serve_later)
    thread.start()
    try:
        wait_for_rank0_store(rank=1, timeout_s=30)
        returned_at = time.monotonic()
    finally:
        thread.join()
        server.close()
    assert listening_at and returned_at >= listening_at[0]

    started = time.monotonic()  # nobody listens now: these return at once
    wait_for_rank0_store(rank=0, timeout_s=30)
    env.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    wait_for_rank0_store(rank=1, timeout_s=30)
    assert time.monotonic() - started < 5


def test_waiting_for_rank0_store_gives_up_at_the_timeout() -> None:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MASTER_ADDR", "127.0.0.1")
        env.setenv("MASTER_PORT", str(_free_port()))  # nobody will listen
        env.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
        started = time.monotonic()
        wait_for_rank0_store(rank=1, timeout_s=0.3)  # returns: torch's store then fails itself
    assert 0.3 <= time.monotonic() - started < 10


def test_a_worker_arms_its_guard_before_importing_torch() -> None:
    """The die-with-its-parent guard runs first in a worker; importing the package and the
    worker entry must not pull torch in before it (that took 1-3 s, a window in which a killed
    caller left its workers training unsupervised)."""
    code = "import sys, ai_distributed_training.launch.worker; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_public_names_load_on_first_use() -> None:
    import ai_distributed_training as package

    assert sorted(package.__all__) == sorted(package._EXPORTS)
    for name in package.__all__:
        assert getattr(package, name).__name__ == name


def test_a_workers_imports_are_built_without_the_collector_then_frozen() -> None:
    """The collector is off while the block runs and on after it, with what the block built
    frozen out of later collections (the distributed determinism test checks a real worker)."""
    assert gc.isenabled()
    frozen_before = gc.get_freeze_count()
    try:
        with collector_off_then_frozen():
            assert not gc.isenabled()
            built = [[] for _ in range(10_000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen_before + len(built)
    finally:
        gc.unfreeze()  # the test process's own objects go back to the collector

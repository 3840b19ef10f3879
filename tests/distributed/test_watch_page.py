"""The live page in a real headless browser (Debian's chromium, driven by Playwright), watching
a real job with ``watch=True``: the step counter and the loss curve advance, a killed worker
shows as a restart with its reason, a slow worker is flagged, and the final state arrives."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ai_distributed_training import DistributedTraining

pytestmark = pytest.mark.distributed

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Where a screenshot of the page during the restart is written, when set (the docs' image).
SCREENSHOT = os.environ.get("ADT_WATCH_SCREENSHOT")


class SlowOnRankOne(nn.Module):
    """A small classifier whose forward pass takes 25 ms longer on rank 1: a straggler."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slow = dist.is_initialized() and dist.get_rank() == 1
        time.sleep(0.03 if slow else 0.005)
        return self.net(x)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train(port: int, runs_dir: Path, out: dict[str, Any]) -> None:
    try:
        out["result"] = DistributedTraining(
            epochs=2,
            batch_size=32,
            log_every_steps=4,
            checkpoint_every=10,
            max_restarts=1,
            fault_injection=[{"kind": "kill", "rank": 1, "step": 40}],
            watch=True,
            watch_port=port,
            runs_dir=str(runs_dir),
        ).train_distributed(SlowOnRankOne, {"samples": 1600, "features": 8}, nodes=2)
    except BaseException as err:  # reported by the test
        out["error"] = err


def _text(page: Any, selector: str) -> str:
    return str(page.text_content(selector) or "")


def test_the_page_follows_a_job_through_a_restart_to_its_end(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    port, out = _free_port(), {}
    job = threading.Thread(target=_train, args=(port, tmp_path / "runs", out), daemon=True)
    job.start()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        deadline = time.monotonic() + 60
        while True:  # the server starts once the job has its run directory
            try:
                page.goto(f"http://127.0.0.1:{port}/")
                break
            except Exception:
                assert time.monotonic() < deadline and job.is_alive(), out
                time.sleep(0.3)
        # The step counter and the loss curve advance while it trains.
        page.wait_for_function("parseInt(document.getElementById('step').textContent) >= 8")
        step = int(_text(page, "#step").split()[0])
        points = int(page.get_attribute("#loss-chart", "data-points") or 0)
        page.wait_for_function(f"parseInt(document.getElementById('step').textContent) > {step}")
        page.wait_for_function(f"document.getElementById('loss-chart').dataset.points > {points}")
        assert _text(page, "#step").endswith(" / 90")  # 2 epochs of 1440 training samples / 32
        # The killed worker: a restart with its reason.
        page.wait_for_selector("#restarts li:has-text('rank 1 was killed by SIGKILL')")
        if SCREENSHOT and _text(page, "#state") == "restarting":
            page.screenshot(path=SCREENSHOT, full_page=True)
        assert _text(page, "#attempt") == "2"
        # Training resumes; the slow rank is flagged; the final state and the report arrive.
        page.wait_for_selector("#state.finished", timeout=90_000)
        assert "restart 1 of 1: rank 1 was killed by SIGKILL" in _text(page, "#restarts")
        assert page.locator("#ranks tr.straggler td").first.text_content() == "1"
        page.wait_for_selector("#plots img[alt='loss.png']")
        # summary.json (finished) is written just before events.log's last line: a later update
        page.wait_for_selector("#events:has-text('Distributed training complete.')")
        browser.close()
    job.join(timeout=60)
    assert "error" not in out, out
    assert out["result"]["restarts"] == 1

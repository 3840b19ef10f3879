"""The GPU benchmark's own code, run on CPU with a tiny decoder (no GPU is lent here)."""

from __future__ import annotations

import pytest
import torch

from bench import gpu

pytestmark = pytest.mark.distributed


def test_gpu_benchmark_reports_mfu_from_counted_training_flops() -> None:
    args = gpu.parse(["--cpu", "--peak-tflops", "0.5"])  # a tiny decoder, 16 tokens per sequence
    out = gpu.run(args)
    # forward + backward is ~6 FLOPs per parameter per token, plus attention's own
    dense = 6 * out["parameters"] * args.seq_len
    assert dense * 0.5 < out["flops_per_sequence"] < dense * 2
    achieved = out["flops_per_sequence"] * out["sequences_per_s"]
    assert out["mfu"] == pytest.approx(achieved / 0.5e12)
    assert out["tokens_per_s"] == pytest.approx(out["sequences_per_s"] * 16)
    assert out["nodes"] == 1 and out["final_loss"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the benchmark would run")
def test_gpu_benchmark_without_a_gpu_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu.main([]) == 2
    assert "no CUDA GPU here" in capsys.readouterr().out

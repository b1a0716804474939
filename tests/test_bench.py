"""The benchmarks that must keep running where no GPU is: `bench/gpu.py --dry-run` runs the
whole GPU benchmark on the tiny models, so the script is ready when a GPU is lent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_benchmark_runs_dry_on_the_tiny_models() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # the dry run, even on a GPU machine
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert out.startswith("bench/gpu.py --dry-run: CPU")
    for family in ("sd1", "sdxl"):
        assert f"{family}: 64x64, 2 steps" in out
    assert out.count("batch 1: engine") == 2
    assert out.count("batch 2: engine") == 2
    assert out.count("engine/plain") == 4
    assert out.count("latency of one image") == 2
    assert out.count("LoRA training at 64x64, float32, rank 4") == 2
    assert out.count("SDBOT_COMPILE: skipped (compiles for CUDA only)") == 2
    assert out.count("high ran") == out.count("medium ran") == out.count("low ran") == 2


def test_the_gpu_benchmark_says_how_to_run_without_a_gpu() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        check=False,
    )
    assert done.returncode == 2
    assert "run with --dry-run" in done.stderr

"""Training speed: LoRA steps per second through engine.training.trainer.train, on the CPU.

Runs `train` on a dedicated thread, as the engine thread runs it, for the tiny test model
(64x64) and for SD 1.5's full-size architecture with random weights at 256x256 (speed does
not depend on what the weights learned). Rank 4, batch 1, no prior preservation. The
first steps warm up (allocations, autograd graphs) and are not counted.

    python bench/train.py                        # tiny, then full size
    python bench/train.py --only tiny --steps 30
    python bench/train.py --only full --steps 4  # a few steps: each is seconds on a CPU
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from PIL import Image

from bench.architectures import sd15_architecture
from engine.api.specs import ModelSpec
from engine.api.training_params import TrainingProgress, make_training_params
from engine.pipelines.loading import LoadedModel, load_model
from engine.pipelines.tiny import save_tiny_model
from engine.training.trainer import train


def photos(count: int, side: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    result = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
        result.append(buffer.getvalue())
    return result


def measure(loaded: LoadedModel, resolution: int, steps: int, warmup: int, workdir: Path) -> None:
    params = make_training_params(
        name="bench",
        model=loaded.spec.name,
        resolution=resolution,
        seed=1,
        class_word="dog",
        steps=steps,
        rank=4,
        checkpoint_every=steps,  # one checkpoint, at the end, as a short job would write
    )
    stamps: list[float] = []

    def report(progress: TrainingProgress) -> None:
        stamps.append(time.perf_counter())

    outcome: dict[str, object] = {}

    def work() -> None:
        try:
            started = outcome["started"] = time.perf_counter()
            outcome["result"] = train(
                loaded,
                params,
                photos(5, resolution),
                workdir=workdir,
                report=report,
                cancel=threading.Event(),
            )
            outcome["seconds"] = time.perf_counter() - started
        except BaseException as error:  # re-raised on the calling thread
            outcome["error"] = error

    thread = threading.Thread(target=work, name="engine-bench")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    durations = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    counted = durations[max(0, warmup - 1) :]
    per_step = statistics.median(counted)
    print(
        f"{loaded.spec.name}: {resolution}x{resolution}, rank 4, batch 1, {steps} steps "
        f"({len(counted)} timed)"
    )
    print(f"  median step      {per_step:8.3f} s   ({1 / per_step:.2f} steps/s)")
    print(f"  mean step        {statistics.fmean(counted):8.3f} s")
    first = stamps[0] - outcome["started"]  # type: ignore[operator]
    print(f"  until step 1     {first:8.1f} s   (adapter, VAE encode, first step)")
    print(f"  whole train()    {outcome['seconds']:8.1f} s   (and checkpoint, save)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["tiny", "full"])
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="sdbot-train-bench-") as scratch:
        root = Path(scratch)
        if args.only in (None, "tiny"):
            folder = save_tiny_model(root / "tiny")
            loaded = load_model(ModelSpec("tiny", str(folder)), cpu, torch.float32)
            measure(loaded, 64, args.steps or 30, warmup=3, workdir=root / "tiny-run")
        if args.only in (None, "full"):
            started = time.perf_counter()
            pipe = sd15_architecture(root / "tokenizer")
            print(f"(built the SD 1.5 architecture in {time.perf_counter() - started:.0f} s)")
            loaded = LoadedModel(ModelSpec("sd15", "random"), pipe, "sd1", None, 0.0)
            measure(loaded, 256, args.steps or 4, warmup=1, workdir=root / "full-run")


if __name__ == "__main__":
    main()

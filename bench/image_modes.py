"""Seconds per image of txt2img and img2img on the engine path, full-size SD 1.5 (random
weights: speed does not depend on what the weights learned).

img2img at denoise 0.5 runs int(steps * 0.5) of the steps plus a VAE encode, so it should
take a little over half of txt2img's time at the same steps.

    python bench/image_modes.py                # 512x512, 10 steps, 1 run each after a warm-up
    python bench/image_modes.py --steps 4 --size 256 --repeats 2
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from PIL import Image

from bench.overhead import save_sd15_architecture
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams
from engine.api.specs import ModelSpec
from engine.worker import EngineConfig, EngineWorker

INIT = "init"


def init_png(size: int) -> bytes:
    """A plain gradient: the pixels do not change the cost."""
    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def seconds_per_image(engine: EngineWorker, job: EngineJob, repeats: int) -> float:
    # Through the engine thread, as the bot runs it: torch keeps one OpenMP team per thread.
    # Warm-up at one step: loads the model and derives the pipeline, at little cost.
    warm = replace(
        job.params, steps=1, denoise=1.0 if job.params.mode != "txt2img" else job.params.denoise
    )
    await engine.generate([EngineJob(0, warm, inputs=job.inputs)])
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await engine.generate([job])
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--denoise", type=float, default=0.5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    with tempfile.TemporaryDirectory(prefix="sdbot-bench-") as workdir:
        started = time.perf_counter()
        folder = save_sd15_architecture(Path(workdir) / "sd15")
        print(f"(built and saved the SD 1.5 architecture in {time.perf_counter() - started:.0f} s)")
        engine = EngineWorker(EngineConfig({"sd15": ModelSpec("sd15", str(folder))}, device="cpu"))
        engine.start()
        try:
            txt = GenerationParams(
                "a lighthouse at dusk",
                "blurry",
                1,
                args.steps,
                7.0,
                args.size,
                args.size,
                "Euler a",
                1,
                "sd15",
            )
            img = GenerationParams(
                **{**txt.to_dict(), "mode": "img2img", "init_image": INIT, "denoise": args.denoise}
            )
            txt_s = await seconds_per_image(engine, EngineJob(1, txt), args.repeats)
            img_job = EngineJob(2, img, inputs={INIT: init_png(args.size)})
            img_s = await seconds_per_image(engine, img_job, args.repeats)
        finally:
            await engine.stop()
    print(f"SD 1.5 architecture, {args.size}x{args.size}, {args.steps} steps, Euler a, CFG 7")
    print(f"  txt2img                      {txt_s:8.2f} s/image")
    print(f"  img2img at denoise {args.denoise:<4g}      {img_s:8.2f} s/image")
    print(
        f"  ratio                        {img_s / txt_s:8.3f}   (expect ~{args.denoise:g} + encode)"
    )


if __name__ == "__main__":
    asyncio.run(main())

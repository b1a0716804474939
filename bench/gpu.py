"""The GPU benchmark: what an owner's card does with this engine, against plain diffusers.

For the SD 1.5 architecture at 512x512 and SDXL's at 1024x1024 (random weights, 20 steps,
Euler a, CFG 7), it prints:

- images per second at batch 1, 4 and 8 through the engine (engine.pipelines.txt2img, the
  bot's path: A1111 prompt encoding, per-image seeds, PNGs with infotext), and the same
  batch as one plain diffusers pipeline call; the latency of one image;
- peak VRAM of one image in each memory mode (high, medium, low: engine/api/memory.py);
- the speed-up of SDBOT_COMPILE (regional compilation) and its warm-up;
- LoRA training steps per second at 512x512 in fp16 (engine.training.trainer.train).

    python bench/gpu.py                  # on a CUDA machine: both families, a few minutes
    python bench/gpu.py --only sd15      # one family
    python bench/gpu.py --dry-run        # anywhere: the tiny test models, 64x64, 2 steps

Anchors from elsewhere, for the record: SD 1.5 at 512x512 batch 1 runs at about 54 it/s
in plain PyTorch on an H100 (about 105 it/s with stable-fast), and SDXL at 1024x1024, 20
steps, at 1.64 images/s on one H100 with TensorRT (MLPerf Inference v4.0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.architectures import build
from bench.train import photos
from engine.api.jobs import EngineJob
from engine.api.memory import MEMORY_MODES, plan_for
from engine.api.params import MAX_COUNT, GenerationParams
from engine.api.specs import ModelFamily, ModelSpec
from engine.api.training_params import TrainingProgress, make_training_params
from engine.pipelines.loading import LoadedModel
from engine.pipelines.memory import compile_unet, configure_allocator, place
from engine.pipelines.txt2img import generate_batch
from engine.training.trainer import train
from engine.worker import quiet_libraries


@dataclass(frozen=True)
class Run:
    """What one invocation measures."""

    families: tuple[ModelFamily, ...]
    tiny: bool
    device: torch.device
    dtype: torch.dtype
    steps: int
    batches: tuple[int, ...]
    repeats: int
    train_steps: int
    compile: bool

    def side(self, family: ModelFamily) -> int:
        if self.tiny:
            return 64
        return 1024 if family == "sdxl" else 512


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, call: Callable[[], Any]) -> float:
    sync(device)
    started = time.perf_counter()
    call()
    sync(device)
    return time.perf_counter() - started


def median_of(run: Run, call: Callable[[], Any]) -> float:
    timed(run.device, call)  # warm-up: allocations, cuDNN's algorithm search
    return statistics.median(timed(run.device, call) for _ in range(run.repeats))


def params_for(run: Run, family: ModelFamily, count: int, seed: int = 1) -> GenerationParams:
    side = run.side(family)
    return GenerationParams(
        prompt="a lighthouse in a storm, (dramatic lighting:1.2)",
        negative="blurry",
        seed=seed,
        steps=run.steps,
        cfg=7.0,
        width=side,
        height=side,
        sampler="Euler a",
        count=count,
        model=family,
    )


def engine_batch(run: Run, loaded: LoadedModel, batch: int) -> None:
    """`batch` images as the engine runs them: jobs of at most MAX_COUNT images, as several
    members' jobs are batched together."""
    jobs, made, number = [], 0, 1
    while made < batch:
        count = min(MAX_COUNT, batch - made)
        jobs.append(EngineJob(number, params_for(run, loaded.family, count, seed=number)))
        made, number = made + count, number + 1
    with torch.inference_mode():
        generate_batch(loaded, jobs, preview_interval=3600.0)


def plain_batch(run: Run, pipe: Any, family: ModelFamily, batch: int) -> None:
    params = params_for(run, family, 1)
    with torch.inference_mode():
        pipe(
            prompt=[params.prompt] * batch,
            negative_prompt=[params.negative] * batch,
            width=params.width,
            height=params.height,
            num_inference_steps=params.steps,
            guidance_scale=params.cfg,
            generator=[torch.Generator().manual_seed(i) for i in range(batch)],
            output_type="pil",
        )


def throughput(run: Run, loaded: LoadedModel) -> float:
    """Images per second per batch size; returns the latency of one image (engine)."""
    latency = 0.0
    for batch in run.batches:
        engine = median_of(run, partial(engine_batch, run, loaded, batch))
        plain = median_of(run, partial(plain_batch, run, loaded.pipe, loaded.family, batch))
        if batch == 1:
            latency = engine
        print(
            f"  batch {batch}: engine {engine:7.3f} s ({batch / engine:6.2f} img/s, "
            f"{run.steps * batch / engine:6.1f} it/s), plain diffusers {plain:7.3f} s "
            f"({batch / plain:6.2f} img/s), engine/plain {engine / plain:.3f}"
        )
    print(f"  latency of one image: {latency:.3f} s ({run.steps / latency:.1f} it/s)")
    return latency


def training(run: Run, loaded: LoadedModel, workdir: Path) -> None:
    """LoRA steps per second at 512x512 (64 in a dry run), rank 4, batch 1."""
    side = 64 if run.tiny else 512
    params = make_training_params(
        name="bench",
        model=loaded.spec.name,
        resolution=side,
        seed=1,
        class_word="dog",
        steps=run.train_steps,
        rank=4,
        checkpoint_every=run.train_steps,
    )
    stamps: list[float] = []

    def report(progress: TrainingProgress) -> None:
        sync(run.device)
        stamps.append(time.perf_counter())

    train(
        loaded,
        params,
        photos(5, side),
        workdir=workdir,
        report=report,
        cancel=threading.Event(),
    )
    warm = stamps[2:] if len(stamps) > 3 else stamps
    per_step = (warm[-1] - warm[0]) / max(1, len(warm) - 1)
    dtype = str(loaded.pipe.unet.dtype).removeprefix("torch.")
    print(
        f"  LoRA training at {side}x{side}, {dtype}, rank 4: {1 / per_step:.2f} steps/s "
        f"({len(warm) - 1} steps timed)"
    )


def compiled(run: Run, loaded: LoadedModel, latency: float) -> None:
    if not run.compile:
        print("  SDBOT_COMPILE: skipped (--no-compile)")
        return
    if run.device.type != "cuda":
        print("  SDBOT_COMPILE: skipped (compiles for CUDA only)")
        return
    compile_unet(loaded.pipe)
    warm_up = timed(run.device, lambda: engine_batch(run, loaded, 1))
    after = median_of(run, lambda: engine_batch(run, loaded, 1))
    print(
        f"  SDBOT_COMPILE: warm-up {warm_up:.1f} s, one image {after:.3f} s "
        f"({latency / after:.2f}x the uncompiled {latency:.3f} s)"
    )


def peak_memory(run: Run, family: ModelFamily, workdir: Path) -> None:
    """One image in each memory mode, on a fresh pipeline resting on the CPU as a loaded
    model does before it is placed."""
    pipe = build(family, run.tiny, run.device, run.dtype, workdir).to("cpu")
    figures = []
    for mode in MEMORY_MODES:
        plan = plan_for(mode)
        if run.device.type == "cuda":
            pipe.remove_all_hooks()
            pipe.to("cpu")
            torch.cuda.empty_cache()
        place(pipe, plan, run.device, family)
        loaded = LoadedModel(ModelSpec(family, "random"), pipe, family, None, 0.0)
        loaded.plan, loaded.device = plan, run.device
        short = replace(run, steps=2, repeats=1)
        if run.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(run.device)
        seconds = timed(run.device, partial(engine_batch, short, loaded, 1))
        if run.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(run.device) / 2**30
            figures.append(f"{mode} {peak:.2f} GiB ({seconds:.1f} s)")
        else:
            figures.append(f"{mode} ran ({seconds:.2f} s)")
    where = "peak VRAM" if run.device.type == "cuda" else "memory modes (no CUDA: no VRAM)"
    print(f"  {where}, one image, 2 steps: " + ", ".join(figures))


def bench_family(run: Run, family: ModelFamily, root: Path) -> None:
    side = run.side(family)
    started = time.perf_counter()
    pipe = build(family, run.tiny, run.device, run.dtype, root / f"{family}-tokenizers")
    built = time.perf_counter() - started
    print(f"{family}: {side}x{side}, {run.steps} steps, Euler a, CFG 7 (built in {built:.0f} s)")
    loaded = LoadedModel(ModelSpec(family, "random"), pipe, family, None, 0.0)
    loaded.device = run.device
    latency = throughput(run, loaded)
    training(run, loaded, root / f"{family}-training")
    compiled(run, loaded, latency)
    del loaded, pipe
    if run.device.type == "cuda":
        torch.cuda.empty_cache()
    peak_memory(run, family, root / f"{family}-modes")


def describe(device: torch.device, dtype: torch.dtype) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        card = f"{props.name} ({props.total_memory / 2**30:.1f} GiB)"
    else:
        card = f"CPU, {torch.get_num_threads()} threads"
    import diffusers

    return (
        f"{card}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"{str(dtype).removeprefix('torch.')}"
    )


def parse() -> Run:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["sd15", "sdxl"])
    parser.add_argument("--dry-run", action="store_true", help="tiny models, 64x64, 2 steps")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        parser.error("no CUDA device here: run with --dry-run (tiny models) or on a GPU")
    families: tuple[ModelFamily, ...] = ("sd1", "sdxl")
    if args.only:
        families = ("sdxl",) if args.only == "sdxl" else ("sd1",)
    return Run(
        families=families,
        tiny=args.dry_run,
        device=torch.device("cuda" if cuda else "cpu"),
        dtype=torch.float16 if cuda else torch.float32,
        steps=2 if args.dry_run else 20,
        batches=(1, 2) if args.dry_run else (1, 4, 8),
        repeats=args.repeats or (1 if args.dry_run else 3),
        train_steps=4 if args.dry_run else 30,
        compile=not args.no_compile,
    )


def main() -> None:
    run = parse()
    configure_allocator()
    quiet_libraries()
    print(f"bench/gpu.py{' --dry-run' if run.tiny else ''}: {describe(run.device, run.dtype)}")
    with tempfile.TemporaryDirectory(prefix="sdbot-gpu-bench-") as scratch:
        for family in run.families:
            bench_family(run, family, Path(scratch))


if __name__ == "__main__":
    main()

"""What the bot adds on top of diffusers, and how responsive the event loop stays.

For the same model and parameters it times a plain diffusers pipeline call against a job
through the bot (service -> SQLite row -> queue -> engine thread -> PNG bytes with infotext
-> files written), alternating the two, and reports medians and their ratio. While the
engine works, a 10 ms ticker on the event loop records how late it wakes up.

    python bench/overhead.py                 # tiny model, then full-size SD 1.5 at 256x256
    python bench/overhead.py --only tiny     # seconds
    python bench/overhead.py --only full --steps 10 --repeats 3
    python bench/overhead.py --only flux     # tiny FLUX.1 dev (also: sd3, flux-schnell)

The SD 3 and FLUX runs use the tiny random models of engine/pipelines/tiny_families.py: a
full-size FLUX.1 transformer (12B parameters) does not fit a CPU benchmark; on a GPU
machine bench/gpu.py measures step times.

Targets: ratio <= 1.05, event-loop lag p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from diffusers import (
    DiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    StableDiffusionPipeline,
)

from bench.architectures import sd15_architecture
from bench.common import Waiter, running_service
from bot.generation.service import DreamService
from bot.logs import configure_logging
from bot.settings import Settings
from engine.api.families import FAMILIES
from engine.api.params import GenerationParams
from engine.pipelines.tiny import save_tiny_model
from engine.pipelines.tiny_families import FLOW_FAMILIES, save_tiny_family
from engine.worker import EngineConfig, EngineWorker

TICK = 0.010


def save_sd15_architecture(folder: Path) -> Path:
    """The SD 1.5 architecture saved as a diffusers folder, loaded back the way users' are."""
    with tempfile.TemporaryDirectory() as workdir:
        sd15_architecture(Path(workdir)).save_pretrained(str(folder))
    return folder


@dataclass
class Figures:
    plain: list[float]
    engine: list[float]
    lags: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.engine) / statistics.median(self.plain)

    def lag_ms(self, quantile: float) -> float:
        ordered = sorted(self.lags)
        return 1000 * ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


async def ticker(lags: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        expected = loop.time() + TICK
        await asyncio.sleep(TICK)
        lags.append(max(0.0, loop.time() - expected))


def load_plain(folder: Path) -> Any:
    pipe = DiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    if isinstance(pipe, StableDiffusionPipeline):
        # The same sampler as the job ("Euler a"), whatever scheduler the model was saved with.
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    return pipe


def plain_call(pipe: Any, params: GenerationParams, family: str = "sd1") -> float:
    """The call a diffusers user makes for the same image: SD 3 and FLUX with their own
    flow-matching Euler, FLUX without a negative prompt, T5 at the family's length."""
    row = FAMILIES[family]  # type: ignore[index]
    assert params.sampler == row.sampler
    options: dict[str, Any] = {}
    if row.negative_prompt:
        options["negative_prompt"] = params.negative
    if row.flow:
        options["max_sequence_length"] = row.prompt_tokens
    started = time.perf_counter()
    with torch.inference_mode():
        pipe(
            prompt=params.prompt,
            width=params.width,
            height=params.height,
            num_inference_steps=params.steps,
            guidance_scale=params.cfg,
            generator=torch.Generator().manual_seed(params.seed),
            output_type="pil",
            **options,
        )
    return time.perf_counter() - started


async def job_call(service: DreamService, params: GenerationParams, lags: list[float]) -> float:
    waiter = Waiter()
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(lags, stop))
    started = time.perf_counter()
    await service.submit(
        service.check(params),
        user_id=1,
        guild_id=None,
        channel_id=None,
        interaction_id=None,
        observer=waiter,
    )
    await waiter.done.wait()
    elapsed = time.perf_counter() - started
    stop.set()
    await tick
    if waiter.error:
        raise RuntimeError(waiter.error)
    assert waiter.outcome is not None
    assert waiter.outcome.images[0].png
    return elapsed


async def measure(
    folder: Path, params: GenerationParams, repeats: int, data: Path, family: str = "sd1"
) -> Figures:
    settings = Settings(
        _env_file=None,
        data_dir=data,
        starting_credits=1_000_000,
        models={params.model: {"source": str(folder)}},
        default_model=params.model,
    )
    engine = EngineWorker(EngineConfig(settings.model_specs(), device="cpu", preview_interval=2.0))
    figures = Figures([], [], [])
    async with running_service(settings, engine) as service:
        # The plain call runs on the engine's own thread too: torch keeps an OpenMP team per
        # calling thread, and two teams on two cores slow each other down, which would blur
        # what this measures (the bot's own overhead).
        plain_pipe = await engine.call(partial(load_plain, folder))
        await job_call(service, params, [])  # warm-up: loads the model in the engine
        plain = partial(plain_call, plain_pipe, params, family)
        await engine.call(plain)
        for _ in range(repeats):
            figures.plain.append(await engine.call(plain))
            figures.engine.append(await job_call(service, params, figures.lags))
    return figures


def report(name: str, params: GenerationParams, figures: Figures) -> None:
    plain = statistics.median(figures.plain)
    through = statistics.median(figures.engine)
    print(
        f"{name}: {params.width}x{params.height}, {params.steps} steps, {params.sampler}, "
        f"CFG {params.cfg:g}, {len(figures.plain)} runs each (medians)"
    )
    print(f"  plain diffusers call    {plain:8.3f} s")
    print(f"  job through the bot     {through:8.3f} s")
    print(f"  ratio                   {figures.ratio:8.3f}   (target <= 1.05)")
    print(
        f"  event-loop lag p50/p99/max  {figures.lag_ms(0.5):.1f} / {figures.lag_ms(0.99):.1f} "
        f"/ {1000 * max(figures.lags):.1f} ms over {len(figures.lags)} ticks (target p99 <= 50)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["tiny", "full", *FLOW_FAMILIES])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    configure_logging("WARNING")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    with tempfile.TemporaryDirectory(prefix="sdbot-bench-") as workdir:
        root = Path(workdir)
        if args.only in (None, "tiny"):
            folder = save_tiny_model(root / "tiny")
            params = GenerationParams(
                "a lighthouse at dusk",
                "blurry",
                1,
                args.steps or 20,
                7.0,
                64,
                64,
                "Euler a",
                1,
                "tiny",
            )
            report(
                "tiny model",
                params,
                await measure(folder, params, args.repeats or 15, root / "data-tiny"),
            )
        for family in FLOW_FAMILIES:
            if args.only in (None, family):
                await measure_flow(family, root, args.steps, args.repeats)
        if args.only in (None, "full"):
            started = time.perf_counter()
            folder = save_sd15_architecture(root / "sd15")
            seconds = time.perf_counter() - started
            print(f"(built and saved the SD 1.5 architecture in {seconds:.0f} s)")
            params = GenerationParams(
                "a lighthouse at dusk",
                "blurry",
                1,
                args.steps or 10,
                7.0,
                256,
                256,
                "Euler a",
                1,
                "sd15",
            )
            report(
                "SD 1.5 architecture, random weights",
                params,
                await measure(folder, params, args.repeats or 3, root / "data-full"),
            )


async def measure_flow(family: str, root: Path, steps: int | None, repeats: int | None) -> None:
    """A tiny model of a flow-matching family, at its own defaults (no negative for FLUX)."""
    row = FAMILIES[family]  # type: ignore[index]
    folder = save_tiny_family(root / family, row.name)
    negative = "blurry" if row.negative_prompt else ""
    params = GenerationParams(
        "a lighthouse at dusk",
        negative,
        1,
        steps or row.steps,
        row.cfg,
        64,
        64,
        row.sampler,
        1,
        family,
    )
    figures = await measure(folder, params, repeats or 15, root / f"data-{family}", family)
    report(f"tiny {row.label}", params, figures)


if __name__ == "__main__":
    asyncio.run(main())

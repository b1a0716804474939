"""Console commands that use the engine without Discord."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from bot.options import DreamOptions, resolve_options
from bot.runner import build_engine
from bot.settings import Settings
from engine.errors import EngineError, ModelLoadError
from engine.images import read_png_infotext
from engine.infotext import params_from_infotext
from engine.jobs import EngineJob
from engine.params import GenerationParams, InvalidParams, ModelInfo, parse_size
from engine.specs import ModelSpec
from engine.worker import EngineWorker

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def model_specs_with_path(settings: Settings, model: str | None) -> dict[str, ModelSpec]:
    """The configured models, plus `model` itself when it names a folder or a file on disk."""
    specs = settings.model_specs()
    if model and model not in specs and Path(model).expanduser().exists():
        specs[model] = ModelSpec(name=model, source=model)
    return specs


async def _generate(engine: EngineWorker, params: GenerationParams) -> list[tuple[int, bytes]]:
    engine.start()
    try:
        [result] = await engine.generate([EngineJob(0, params)])
    finally:
        await engine.stop()
    return [(image.seed, image.png) for image in result.images]


def _seed_text(seed: int, params: GenerationParams, index: int) -> str:
    if not params.has_variation:
        return f"seed={seed}"
    return (
        f"seed={seed} variation_seed={params.variation_seeds[index]} "
        f"strength={params.variation_strength:g}"
    )


def dream(settings: Settings, args: argparse.Namespace) -> int:
    specs = model_specs_with_path(settings, args.model)
    try:
        options = DreamOptions(
            prompt=args.prompt,
            negative=args.negative,
            seed=args.seed,
            steps=args.steps,
            cfg=args.cfg,
            size=parse_size(args.size) if args.size else None,
            sampler=args.sampler,
            count=args.count,
            model=args.model,
            clip_skip=args.clip_skip,
            prompt_syntax=args.syntax,
            variation_seed=args.variation_seed,
            variation_strength=args.variation_strength,
        )
        params = resolve_options(
            options,
            specs,
            settings.default_model,
            settings.max_prompt_length,
            settings.prompt_syntax,
        )
    except InvalidParams as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    engine = build_engine(settings, models=specs)
    try:
        images = asyncio.run(_generate(engine, params))
    except ModelLoadError as error:  # the console user is the owner: show the whole reason
        print(f"error: {error.detail}", file=sys.stderr)
        return EXIT_FAILED
    except EngineError as error:
        print(f"error: {error.user_message}", file=sys.stderr)
        return EXIT_FAILED
    out = Path(args.out) if args.out else settings.data_dir / "out"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for index, (seed, png) in enumerate(images):
        path = out / f"{stamp}-{index}-{seed}.png"
        path.write_bytes(png)
        print(f"{path}\t{_seed_text(seed, params, index)}")
    return 0


def selftest(settings: Settings) -> int:
    """Build a tiny random model, load it the normal way, generate one image, check it."""
    from engine.tiny import save_tiny_model

    with tempfile.TemporaryDirectory(prefix="sdbot-selftest-") as workdir:
        started = time.perf_counter()
        folder = save_tiny_model(Path(workdir) / "tiny-sd")
        built = time.perf_counter() - started
        spec = ModelSpec(name="selftest", source=str(folder))
        engine = build_engine(settings, models={"selftest": spec})
        params = GenerationParams(
            prompt="a red cube on a table",
            negative="blurry",
            seed=1,
            steps=4,
            cfg=7.0,
            width=64,
            height=64,
            sampler="Euler a",
            count=1,
            model="selftest",
        )
        try:
            info, images, generate_seconds = asyncio.run(_selftest_run(engine, params))
        except EngineError as error:
            print(f"FAILED: {error.user_message}")
            return EXIT_FAILED
    [(seed, png)] = images
    infotext = read_png_infotext(png)
    if infotext is None or params_from_infotext(infotext) != params:
        print("FAILED: the image's infotext does not match its parameters")
        return EXIT_FAILED
    print(
        f"OK build {built:.2f}s, load {info.load_seconds:.2f}s, generate {generate_seconds:.2f}s "
        f"(64x64, 4 steps, seed {seed}, {info.device} {info.dtype})"
    )
    return 0


async def _selftest_run(
    engine: EngineWorker, params: GenerationParams
) -> tuple[ModelInfo, list[tuple[int, bytes]], float]:
    engine.start()
    try:
        info = await engine.preload(params.model)
        started = time.perf_counter()
        [result] = await engine.generate([EngineJob(0, params)])
        return info, [(i.seed, i.png) for i in result.images], time.perf_counter() - started
    finally:
        await engine.stop()

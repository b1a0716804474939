"""Console commands that use the engine without Discord.

Everything the owner can get wrong (arguments, the output folder, the model's files, the
device) is checked before the engine imports torch and diffusers, and told in one line
with exit status 2; nothing is written until the images are made.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path

from bot.generation.options import DreamOptions, resolve_options
from bot.jobs.engines import build_engine, local_engine
from bot.settings import Settings
from engine.api.checks import parse_size
from engine.api.errors import EngineError, ModelLoadError
from engine.api.families import FAMILIES
from engine.api.infotext import params_from_infotext
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams, InvalidParams, ModelInfo
from engine.api.port import EnginePort
from engine.api.specs import SINGLE_FILE_SUFFIXES, ModelFamily, ModelSpec
from engine.imaging.images import read_png_infotext
from engine.worker import EngineWorker, quiet_libraries

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
MODEL_KINDS = "a configured name, a diffusers folder or a .safetensors/.ckpt file"


def model_specs_with_path(
    settings: Settings, model: str | None, config: str | None = None
) -> tuple[dict[str, ModelSpec], str | None]:
    """The configured models, plus `model` itself when it names a folder or a file on disk;
    and the name `model` goes by. A path goes by the checkpoint's name (the file's stem, the
    folder's name), as A1111 writes `Model:`: the infotext never carries the owner's paths.
    `config` (--config) is the configuration a single file loads with."""
    specs = settings.model_specs()
    name = model
    if model is not None and model not in specs:
        path = Path(model).expanduser()
        if path.exists():
            name = path.stem if path.is_file() else path.resolve().name
            specs[name] = ModelSpec(name=name, source=str(path))
        elif "/" in model or model.lower().endswith(SINGLE_FILE_SUFFIXES):
            raise InvalidParams(
                f"--model {model}: there is no file or folder {path.absolute()} "
                f"(--model takes {MODEL_KINDS})"
            )
    if config is not None:
        target = specs.get(name or settings.default_model)
        if target is not None:
            if not target.is_single_file:
                raise InvalidParams(
                    f"--config is for a .safetensors/.ckpt file, and model {target.name} is "
                    f"{target.source}"
                )
            specs[target.name] = dataclasses.replace(target, config=config)
    return specs, name


class _SaidOnTheConsole(logging.Filter):
    """The console prints a model's load failure itself; the engine's log line for the bot's
    log would say it a second time."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def set_up_problems(
    settings: Settings, spec: ModelSpec, console_model: bool, out: Path, out_setting: str
) -> list[str]:
    """What would make a dream fail after its images are made, or half-way: the output folder,
    the model's files, the device; one line each."""
    from bot.cli.checks.machine import device_finding
    from bot.cli.checks.models import model_findings
    from bot.cli.checks.storage import folder_finding

    findings = [
        folder_finding(out_setting, out),
        *model_findings(spec, console=console_model, derived=False),
        device_finding(settings.device),
    ]
    return [finding.problem() for finding in findings if not finding.ok]


async def _generate(engine: EnginePort, params: GenerationParams) -> list[tuple[int, bytes]]:
    async with engine:
        if not await engine.workers():  # a fleet with no GPU in it would wait forever
            raise NoGpuWorker(NO_WORKER)
        [result] = await engine.generate([EngineJob(0, params)])
    return [(image.seed, image.png) for image in result.images]


class NoGpuWorker(EngineError):
    """SDBOT_QUEUE_URL is set and no worker is there: a set-up problem, not a failure."""


NO_WORKER = (
    "no GPU worker is running for SDBOT_QUEUE_URL: start one with python -m bot worker, "
    "or give --model a path to run here"
)


def _seed_text(seed: int, params: GenerationParams, index: int) -> str:
    if not params.has_variation:
        return f"seed={seed}"
    return (
        f"seed={seed} variation_seed={params.variation_seeds[index]} "
        f"strength={params.variation_strength:g}"
    )


def dream(settings: Settings, args: argparse.Namespace) -> int:
    try:
        specs, model = model_specs_with_path(settings, args.model, args.config)
        options = DreamOptions(
            prompt=args.prompt,
            negative=args.negative,
            seed=args.seed,
            steps=args.steps,
            cfg=args.cfg,
            size=parse_size(args.size) if args.size else None,
            sampler=args.sampler,
            count=args.count,
            model=model,
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
    out = Path(args.out) if args.out else settings.data_dir / "out"
    # A model given on the command line (a path, or --config) is fixed there, not in .env.
    console_model = specs[params.model] != settings.model_specs().get(params.model)
    problems = set_up_problems(
        settings,
        specs[params.model],
        console_model,
        out,
        "--out" if args.out else "SDBOT_DATA_DIR",
    )
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    quiet_libraries()
    # With SDBOT_QUEUE_URL, a configured model is served by the GPU workers, as the bot's
    # jobs are (one command shows a fleet works); a model given as a path runs here.
    fleet = settings.queue_url is not None and not console_model
    engine = build_engine(settings) if fleet else local_engine(settings, models=specs)
    loading_log = logging.getLogger("engine.pipelines.loading")
    said = _SaidOnTheConsole()
    loading_log.addFilter(said)
    try:
        images = asyncio.run(_generate(engine, params))
    except NoGpuWorker as error:
        print(f"error: {error.user_message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ModelLoadError as error:  # the console user is the owner: show the whole reason
        print(f"error: {error.detail}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except EngineError as error:
        print(f"error: {error.user_message}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        loading_log.removeFilter(said)
    return _write_images(out, images, params)


def _write_images(out: Path, images: list[tuple[int, bytes]], params: GenerationParams) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    written: list[str] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for index, (seed, png) in enumerate(images):
            path = out / f"{stamp}-{index}-{seed}.png"
            path.write_bytes(png)
            written.append(f"{path}\t{_seed_text(seed, params, index)}")
    except OSError as error:  # checked before generating; a disk can still fill up
        print(f"error: the images could not be written to {out}: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        for line in written:
            print(line)
    return 0


def selftest_params(family: ModelFamily) -> GenerationParams:
    """A 64x64, 4-step job of the family's own sampler and guidance (a negative prompt only
    where the family takes one)."""
    row = FAMILIES[family]
    return GenerationParams(
        prompt="a red cube on a table",
        negative="blurry" if row.negative_prompt else "",
        seed=1,
        steps=4,
        cfg=row.cfg,
        width=64,
        height=64,
        sampler=row.sampler,
        count=1,
        model="selftest",
    )


def selftest(settings: Settings, save: Path | None = None, family: ModelFamily = "sd1") -> int:
    """Build a tiny random model of `family`, load it the normal way, generate one image,
    check it; `save` keeps the model in that new folder. With SDBOT_QUEUE_URL, then each
    configured model makes one image on the GPU workers (bot/cli/fleet_check.py)."""
    from bot.cli.checks.machine import device_finding

    device = device_finding(settings.device)
    if not device.ok:
        print(f"error: {device.problem()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if save is not None and save.exists() and (not save.is_dir() or any(save.iterdir())):
        print(f"error: --save {save}: choose a new or empty folder", file=sys.stderr)
        return EXIT_BAD_INPUT
    quiet_libraries()
    from engine.pipelines.tiny_families import save_tiny_family

    with tempfile.TemporaryDirectory(prefix="sdbot-selftest-") as workdir:
        started = time.perf_counter()
        folder = save_tiny_family(save or Path(workdir) / f"tiny-{family}", family)
        built = time.perf_counter() - started
        spec = ModelSpec(name="selftest", source=str(folder))
        engine = local_engine(settings, models={"selftest": spec})
        params = selftest_params(family)
        try:
            info, images, generate_seconds = asyncio.run(_selftest_run(engine, params))
        except ModelLoadError as error:
            print(f"FAILED: {error.detail}")
            return EXIT_FAILED
        except EngineError as error:
            print(f"FAILED: {error.user_message}")
            return EXIT_FAILED
    [(seed, png)] = images
    infotext = read_png_infotext(png)
    read = params_from_infotext(infotext) if infotext is not None else None
    # `Model` names the checkpoint, as A1111 does: the tiny model's folder.
    if (
        read is None
        or dataclasses.replace(read, model=params.model) != params
        or read.model != folder.name
    ):
        print("FAILED: the image's infotext does not match its parameters")
        return EXIT_FAILED
    if info.family != family:
        print(f"FAILED: the tiny {family} model loaded as {info.family}")
        return EXIT_FAILED
    print(
        f"OK build {built:.2f}s, load {info.load_seconds:.2f}s, generate {generate_seconds:.2f}s "
        f"({family}, 64x64, 4 steps, seed {seed}, {info.device} {info.dtype}, memory "
        f"{info.memory})"
    )
    if save is not None:
        print(f"the tiny model is in {save}: --model {save} on dream")
    if settings.queue_url is not None:  # and the GPU workers, through the bot's own path
        from bot.cli.fleet_check import fleet_selftest

        return fleet_selftest(settings, selftest_params)
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


def worker(settings: Settings, name: str | None) -> int:
    """`python -m bot worker`: serve the bot's batches from Redis on this machine's GPU,
    until interrupted. It needs the models and SDBOT_QUEUE_URL, no database or token."""
    assert settings.queue_url is not None  # checked by the caller (bot/__main__.py)
    from redis.exceptions import RedisError

    from bot.fleet.worker import default_name, run_worker

    quiet_libraries()
    url = settings.queue_url.get_secret_value()
    try:
        asyncio.run(
            run_worker(
                url,
                local_engine(settings),
                name or default_name(),
                settings.data_dir,
                settings.worker_lease_seconds,
            )
        )
    except KeyboardInterrupt:
        logging.getLogger(__name__).info("worker stopped")
    except (RedisError, OSError) as error:
        print(f"SDBOT_QUEUE_URL could not be reached ({error}): is Redis running?", file=sys.stderr)
        return 2
    return 0

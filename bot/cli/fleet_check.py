"""`selftest` with SDBOT_QUEUE_URL: the GPU workers checked through the bot's own path.

The local check proves this machine's install; this one proves the fleet: each configured
model that a live worker serves makes one small image through Redis, exactly as the bot's
jobs go, and its infotext is read back. A configured model no live worker serves is named,
since the bot's jobs for it would wait until one starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.jobs.engines import build_engine
from bot.settings import Settings
from engine.api.errors import EngineError
from engine.api.infotext import params_from_infotext
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams
from engine.api.port import EnginePort, WorkerState
from engine.api.specs import ModelFamily
from engine.imaging.images import read_png_infotext

EXIT_FAILED = 1
EXIT_NO_WORKER = 2
NO_WORKER = "no GPU worker is running for SDBOT_QUEUE_URL: start one with python -m bot worker"


@dataclass(frozen=True, slots=True)
class ModelCheck:
    model: str
    seconds: float | None  # None: it failed, or nobody serves it
    problem: str | None = None

    def line(self) -> str:
        if self.problem is not None:
            return f"FAILED fleet {self.model}: {self.problem}"
        return f"OK fleet {self.model}: 64x64, 4 steps in {self.seconds:.2f}s on a GPU worker"


def fleet_selftest(
    settings: Settings, params_for: Callable[[ModelFamily], GenerationParams]
) -> int:
    """One image per configured model through the workers; 0 when every model was served."""
    try:
        workers, checks = asyncio.run(_check_fleet(build_engine(settings), settings, params_for))
    except NoWorker:
        print(f"error: {NO_WORKER}", file=sys.stderr)
        return EXIT_NO_WORKER
    names = ", ".join(f"{worker.name} ({', '.join(worker.models)})" for worker in workers)
    print(f"fleet: {len(workers)} GPU worker{'s' if len(workers) != 1 else ''}: {names}")
    for check in checks:
        print(check.line())
    return EXIT_FAILED if any(check.problem for check in checks) else 0


class NoWorker(Exception):
    pass


async def _check_fleet(
    engine: EnginePort,
    settings: Settings,
    params_for: Callable[[ModelFamily], GenerationParams],
) -> tuple[list[WorkerState], list[ModelCheck]]:
    async with engine:
        workers = await engine.workers()
        if not workers:
            raise NoWorker()
        served = {model for worker in workers for model in worker.models}
        checks = []
        for name, spec in settings.model_specs().items():
            if name not in served:
                checks.append(ModelCheck(name, None, "no live worker serves it (its SDBOT_MODELS)"))
                continue
            params = dataclasses.replace(params_for(spec.guessed_family()), model=name)
            checks.append(await _one_image(engine, params))
    return workers, checks


async def _one_image(engine: EnginePort, params: GenerationParams) -> ModelCheck:
    started = time.perf_counter()
    try:
        [result] = await engine.generate([EngineJob(0, params)])
    except EngineError as error:
        return ModelCheck(params.model, None, error.user_message)
    seconds = time.perf_counter() - started
    [image] = result.images
    infotext = read_png_infotext(image.png)
    read = params_from_infotext(infotext) if infotext is not None else None
    if read is None or read.seed != params.seed or read.steps != params.steps:
        return ModelCheck(params.model, None, "the image's infotext does not match its job")
    return ModelCheck(params.model, seconds)

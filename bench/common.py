"""What the benchmarks share: the service built around an engine, an observer that waits for
a job's outcome, and an engine whose generation is instant.

Torch-free on purpose: `bench/soak.py` measures the bot's own memory and file use over
thousands of jobs, and importing torch (or diffusers) would add a large, unrelated heap to
what it watches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from PIL import Image

from bot.generation.handler import GenerationHandler
from bot.generation.service import DreamService
from bot.jobs.contracts import JobOutcome, PostAsIs
from bot.jobs.inputs import InputStore
from bot.jobs.kinds import JobKind
from bot.jobs.queue import JobQueue
from bot.jobs.scheduler import Scheduler
from bot.settings import Settings
from data.credits import CreditRepository
from data.jobs import JobRepository
from data.store import Store
from engine.api.errors import JobCancelled
from engine.api.infotext import build_infotext
from engine.api.jobs import EngineJob
from engine.api.params import GeneratedImage, GenerationResult, Progress
from engine.imaging.images import encode_png
from engine.worker import EngineConfig, EngineWorker


class Waiter:
    """A JobObserver that just waits for the outcome."""

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.outcome: JobOutcome | None = None
        self.error: str | None = None

    def progress(self, job_id: int, progress: Progress) -> None:
        pass

    async def succeeded(self, outcome: JobOutcome) -> int | None:
        self.outcome = outcome
        self.done.set()
        return None

    async def failed(self, job: object, message: str, refunded: int) -> None:
        self.error = message
        self.done.set()

    async def waiting(self, entry: object) -> None:
        pass  # a pause of the queue changes nothing a benchmark measures


class InstantEngine(EngineWorker):
    """The real engine thread, request queue and loop callbacks, with generation replaced
    by a solid-colour PNG (infotext included) made at once: the bot's side of a job at its
    full rate, without torch. The models `settings` names need not exist anywhere."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(EngineConfig(settings.model_specs(), device="cpu"))

    def _generate(self, jobs: Sequence[EngineJob]) -> list[GenerationResult]:
        results = []
        for job in jobs:
            params = job.params
            job.report(Progress(0, params.steps))
            if job.cancel.is_set():
                raise JobCancelled()
            images = []
            for index in range(params.count):
                seed = params.seed + index
                infotext = build_infotext(params, seed=seed, model_hash=None)
                picture = Image.new("RGB", (params.width, params.height), (seed % 256, 96, 160))
                png = encode_png(picture, infotext)
                images.append(GeneratedImage(seed, png, params.width, params.height, infotext))
            job.report(Progress(params.steps, params.steps))
            results.append(GenerationResult(images, None, 0.0))
        return results


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings, engine: EngineWorker, store: Store | None = None
) -> AsyncIterator[DreamService]:
    """A DreamService over the store in `settings.data_dir` (or `store`, for a caller that
    reads it too), its engine started and its dispatcher running, as the bot's runner builds
    it minus Discord, servers' rules and the safety review. All three are stopped and closed
    on the way out; the service's `scheduler` is the one running."""
    store = store or Store(settings.db_path)
    policy = settings.credit_policy()
    jobs, credits = JobRepository(store, policy), CreditRepository(store, policy)
    inputs = InputStore(settings.inputs_dir)
    handler = GenerationHandler(settings.images_dir, jobs, credits, inputs, engine, PostAsIs())
    scheduler = Scheduler(jobs, JobQueue(), {JobKind.GENERATE: handler}, engine)
    service = DreamService(settings, jobs, credits, scheduler, handler, gate=None, adapters=None)
    async with store, engine:
        dispatcher = asyncio.create_task(scheduler.run())
        try:
            yield service
        finally:
            await scheduler.stop(dispatcher)
            await scheduler.close()

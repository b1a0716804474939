"""The service layer: the only code that touches both the store and the engine.

Cogs call it with plain values and hear back through a `JobObserver`; the CLI uses the
same service without Discord.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bot.queue import JobQueue, QueuedJob
from bot.settings import Settings
from data.jobs import DuplicateInteraction, Job, JobImage, JobRepository, JobStatus
from engine.errors import EngineError
from engine.params import (
    GenerationParams,
    GenerationResult,
    InvalidParams,
    Progress,
    check_params,
)
from engine.samplers import DEFAULT_SAMPLER
from engine.specs import ModelSpec
from engine.txt2img import EngineJob
from engine.worker import EngineWorker

log = logging.getLogger(__name__)

T = TypeVar("T")

DREAM = "dream"
RESTART_MESSAGE = "The bot restarted before this job finished."


@dataclass(frozen=True, slots=True)
class StoredImage:
    seed: int
    path: Path
    width: int
    height: int
    infotext: str
    png: bytes


@dataclass(frozen=True, slots=True)
class JobOutcome:
    job: Job
    params: GenerationParams
    images: list[StoredImage]
    model_hash: str | None
    run_seconds: float
    queued_seconds: float


@dataclass(frozen=True, slots=True)
class Ticket:
    job: Job
    params: GenerationParams
    position: int


class JobObserver(Protocol):
    """How a job's owner hears about it. `progress` runs on the loop and must not block."""

    def progress(self, job_id: int, progress: Progress) -> None: ...

    async def succeeded(self, outcome: JobOutcome) -> int | None:
        """Show the result; returns the id of the message that holds it, if any."""

    async def failed(self, job: Job, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class DreamOptions:
    """What a member typed; None means "use the default"."""

    prompt: str
    negative: str | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    size: tuple[int, int] | None = None
    sampler: str | None = None
    count: int | None = None
    model: str | None = None


DEFAULT_STEPS = 20
DEFAULT_CFG = 7.0


class DreamService:
    def __init__(
        self,
        settings: Settings,
        jobs: JobRepository,
        engine: EngineWorker,
        queue: JobQueue | None = None,
    ) -> None:
        self.settings = settings
        self.models: dict[str, ModelSpec] = settings.model_specs()
        self.jobs = jobs
        self.engine = engine
        self.queue = queue or JobQueue()
        self._observers: dict[int, JobObserver] = {}
        # How the dispatcher waits for work. A test harness that must tell an idle bot from
        # a busy one (SimCord's `external_wait`) replaces it.
        self.idle_wait: IdleWait = plain_wait
        self._tasks: set[asyncio.Task[None]] = set()

    # -- accepting work -------------------------------------------------------------------

    def build_params(self, options: DreamOptions) -> GenerationParams:
        """Fill the defaults and check everything; InvalidParams names what is wrong."""
        return resolve_options(
            options, self.models, self.settings.default_model, self.settings.max_prompt_length
        )

    async def submit(
        self,
        params: GenerationParams,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        interaction_id: int | None,
        observer: JobObserver,
    ) -> Ticket:
        """Record the job, then queue it: a job is a row before it is queued."""
        check_params(params, self.models, self.settings.max_prompt_length)
        try:
            job = await self.jobs.create(
                kind=DREAM,
                user_id=user_id,
                guild_id=guild_id,
                channel_id=channel_id,
                interaction_id=interaction_id,
                params=params.to_dict(),
            )
        except DuplicateInteraction as duplicate:  # a retried interaction: one job, not two
            existing = duplicate.job
            return Ticket(
                existing,
                GenerationParams.from_dict(existing.params),
                self.queue.position(existing.id),
            )
        self._observers[job.id] = observer
        engine_job = EngineJob(job.id, params, report=lambda p: observer.progress(job.id, p))
        position = self.queue.put(QueuedJob(job.id, user_id, engine_job, time.monotonic()))
        log.info("job=%s kind=%s user=%s queued position=%s", job.id, DREAM, user_id, position)
        return Ticket(job, params, position)

    async def set_message(self, job_id: int, message_id: int) -> None:
        await self.jobs.set_message(job_id, message_id)

    # -- start-up and the dispatcher ------------------------------------------------------

    async def recover(self) -> list[Job]:
        """Jobs a previous run left unfinished are failed, so none stays `running` forever."""
        stale = await self.jobs.with_status(JobStatus.QUEUED, JobStatus.RUNNING)
        for job in stale:
            await self.jobs.finish(job.id, JobStatus.FAILED, error=RESTART_MESSAGE)
            log.warning("job=%s outcome=failed reason=restart", job.id)
        return stale

    async def run(self) -> None:
        """The dispatcher: one batch at a time to the engine thread, forever."""
        while True:
            batch = await self.idle_wait(self.queue.take_batch(), reason="waiting for jobs")
            await self.run_batch(batch)

    async def run_batch(self, batch: list[QueuedJob]) -> None:
        claimed = [entry for entry in batch if await self.jobs.mark_running(entry.job_id)]
        if not claimed:
            return
        self.queue.running = claimed
        try:
            results = await self.engine.generate([entry.engine_job for entry in claimed])
        except EngineError as error:
            for entry in claimed:
                await self._fail(entry, error.user_message)
        else:
            for entry, result in zip(claimed, results, strict=True):
                await self._succeed(entry, result)
        finally:
            self.queue.running = []

    async def _succeed(self, entry: QueuedJob, result: GenerationResult) -> None:
        params = entry.engine_job.params
        stored = await asyncio.to_thread(self._write_images, entry.job_id, result)
        await self.jobs.add_images(
            [
                JobImage(
                    entry.job_id,
                    idx,
                    image.seed,
                    str(image.path),
                    image.width,
                    image.height,
                    image.infotext,
                )
                for idx, image in enumerate(stored)
            ]
        )
        await self.jobs.finish(entry.job_id, JobStatus.SUCCEEDED)
        job = await self.jobs.get(entry.job_id)
        assert job is not None
        queued = (job.started_at or job.created_at) - job.created_at
        log.info(
            "job=%s kind=%s user=%s queued=%.1fs ran=%.1fs outcome=succeeded",
            job.id,
            job.kind,
            job.user_id,
            queued,
            result.seconds,
        )
        outcome = JobOutcome(job, params, stored, result.model_hash, result.seconds, queued)
        observer = self._observers.pop(entry.job_id, None)
        if observer is not None:
            self._spawn(self._deliver(observer, outcome))

    async def _fail(self, entry: QueuedJob, message: str) -> None:
        await self.jobs.finish(entry.job_id, JobStatus.FAILED, error=message)
        job = await self.jobs.get(entry.job_id)
        assert job is not None
        log.info(
            "job=%s kind=%s user=%s outcome=failed error=%r", job.id, job.kind, job.user_id, message
        )
        observer = self._observers.pop(entry.job_id, None)
        if observer is not None:
            self._spawn(observer.failed(job, message))

    async def _deliver(self, observer: JobObserver, outcome: JobOutcome) -> None:
        message_id = await observer.succeeded(outcome)
        if message_id is not None:
            await self.jobs.set_message(outcome.job.id, message_id)

    def _write_images(self, job_id: int, result: GenerationResult) -> list[StoredImage]:
        folder = self.settings.images_dir / str(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        stored = []
        for idx, image in enumerate(result.images):
            path = folder / f"{idx}-{image.seed}.png"
            path.write_bytes(image.png)
            stored.append(
                StoredImage(image.seed, path, image.width, image.height, image.infotext, image.png)
            )
        return stored

    def _spawn(self, delivery: Coroutine[Any, Any, None]) -> None:
        """Deliver outcomes on their own task: a slow Discord call never holds up the GPU."""

        async def deliver() -> None:
            try:
                await delivery
            except Exception:
                log.exception("delivering a job's outcome failed")

        task = asyncio.create_task(deliver())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for outcome deliveries in flight (used at shutdown and by tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.drain()


def resolve_options(
    options: DreamOptions, models: dict[str, ModelSpec], default_model: str, max_prompt: int
) -> GenerationParams:
    """A member's options plus defaults, checked; InvalidParams names what is wrong."""
    model = options.model or default_model
    spec = models.get(model)
    if spec is None:
        raise InvalidParams(f"Unknown model {model!r}. Models: {', '.join(sorted(models))}.")
    width, height = options.size or spec.size_default()
    seed = options.seed if options.seed is not None and options.seed >= 0 else random_seed()
    params = GenerationParams(
        prompt=options.prompt.strip(),
        negative=(options.negative or "").strip(),
        seed=seed,
        steps=options.steps if options.steps is not None else DEFAULT_STEPS,
        cfg=options.cfg if options.cfg is not None else DEFAULT_CFG,
        width=width,
        height=height,
        sampler=options.sampler or DEFAULT_SAMPLER,
        count=options.count if options.count is not None else 1,
        model=model,
    )
    check_params(params, models, max_prompt)
    return params


class IdleWait(Protocol):
    async def __call__(self, awaitable: Awaitable[T], *, reason: str) -> T: ...


async def plain_wait(awaitable: Awaitable[T], *, reason: str) -> T:
    return await awaitable


def random_seed() -> int:
    return secrets.randbelow(2**32)

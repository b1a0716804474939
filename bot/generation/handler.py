"""Running image jobs: a batch to the engine, its images to disk, the safety review, and
the result stored and posted. The scheduler (bot/jobs/scheduler.py) hands batches here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from dataclasses import replace
from pathlib import Path

from bot.generation.options import price_units
from bot.jobs.contracts import JobObserver, JobOutcome, JobRefused, Reviewer, StoredImage
from bot.jobs.inputs import InputStore, MissingInput
from bot.jobs.kinds import JobKind, JobLife, Post, Unrestorable, Work
from bot.jobs.queue import QueuedJob
from data.credits import CreditRepository
from data.jobs import Job, JobImage, JobRepository
from data.store import StoreBusy
from engine.api.errors import EngineError, JobCancelled
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams, GenerationResult
from engine.api.port import EnginePort

log = logging.getLogger(__name__)

UNREADABLE = "After an update the bot could not read this job back."
INPUT_GONE = "The image this job started from is no longer on the bot's disk."
DISK_FULL = "The bot's disk is full, so the images could not be saved."
NOT_SAVED = "The bot could not save the images to its disk."
STORE_BUSY = "The bot's database was busy for too long, so the result could not be saved."


class GenerationHandler:
    kind = JobKind.GENERATE
    pauses_on_shutdown = False

    def __init__(
        self,
        images_dir: Path,
        jobs: JobRepository,
        credits: CreditRepository,
        inputs: InputStore,
        engine: EnginePort,
        reviewer: Reviewer,
    ) -> None:
        self.images_dir = images_dir
        self.jobs = jobs
        self.credits = credits
        self.inputs = inputs
        self.engine = engine
        self.reviewer = reviewer

    # -- what the scheduler asks of every kind ------------------------------------------

    async def restore(self, job: Job) -> Work:
        try:
            params = GenerationParams.from_dict(job.params)
        except TypeError:
            raise Unrestorable(UNREADABLE) from None
        return await self.work(job, params)

    async def work(self, job: Job, params: GenerationParams) -> EngineJob:
        """The engine's job for a recorded row, with the bytes of the images it starts from."""
        return EngineJob(job.id, params, inputs=await self.input_images(params))

    async def input_images(self, params: GenerationParams) -> dict[str, bytes]:
        """The stored images `params` start from, by key; Unrestorable when one is gone."""
        try:
            return await self.inputs.for_params(params)
        except MissingInput:
            raise Unrestorable(INPUT_GONE) from None

    def units(self, work: Work) -> float:
        assert isinstance(work, EngineJob)
        return price_units(work.params)

    def shown(self, work: Work) -> GenerationParams:
        assert isinstance(work, EngineJob)
        return work.params

    async def discard(self, job_id: int) -> None:
        """Nothing to remove: its input images are shared by content (bot/jobs/inputs.py)."""

    # -- running ------------------------------------------------------------------------

    async def run(self, batch: list[QueuedJob], life: JobLife) -> None:
        jobs = [entry.engine_job for entry in batch if isinstance(entry.engine_job, EngineJob)]
        try:
            results = await life.idle(
                self.engine.generate(jobs), reason="the engine thread is generating"
            )
        except (JobCancelled, EngineError) as error:
            cancelled = isinstance(error, JobCancelled)
            for entry in batch:
                life.stop_running(entry)
                await life.fail(
                    entry, "Cancelled." if cancelled else error.user_message, cancelled=cancelled
                )
            return
        life.learned(sum(self.units(e.engine_job) for e in batch), _seconds(results))
        for entry, result in zip(batch, results, strict=True):
            # Out of `running` before the outcome is decided: a later /cancel is told the
            # job has ended instead of being promised a refund that will not come.
            life.stop_running(entry)
            if entry.engine_job.cancel.is_set():  # cancelled while batched with others
                await life.fail(entry, "Cancelled.", cancelled=True)
            else:
                await self._succeed(entry, result, life)

    async def _succeed(self, entry: QueuedJob, result: GenerationResult, life: JobLife) -> None:
        try:
            stored = await asyncio.to_thread(self._write_images, entry.job_id, result)
        except OSError as error:
            # A full disk (or a folder the bot may not write): there is nothing to post, so
            # the job fails and is refunded. Nothing is held back: the next job writes
            # again, so the bot serves as soon as there is space.
            log.error("job=%s images not saved: %s", entry.job_id, error)
            full = error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
            # Quietly: the database may sit on the same full disk; the batch's other jobs
            # go on either way.
            await life.fail_quietly(entry, DISK_FULL if full else NOT_SAVED)
            return
        requester = life.take_requester(entry.job_id)
        try:
            stored = await life.idle(
                self.reviewer.review(entry.job_id, stored, requester),
                reason="the engine thread is checking the images",
            )
        except JobRefused as withheld:  # nothing posted; failed, so refunded
            await life.fail(entry, str(withheld))
            return
        try:
            completed = await self.jobs.complete(entry.job_id, _rows(entry.job_id, stored))
        except StoreBusy as busy:  # another connection held the lock through every try
            log.warning("job=%s result not stored: %s", entry.job_id, busy)
            await life.fail_quietly(entry, STORE_BUSY)
            return
        if not completed:  # cancelled from the outside while its images were being saved
            log.info("job=%s ended before its result was stored; result dropped", entry.job_id)
            return
        job = await self.jobs.get(entry.job_id)
        assert job is not None
        assert isinstance(entry.engine_job, EngineJob)
        queued = (job.started_at or job.created_at) - job.created_at
        log.info(
            "job=%s kind=%s user=%s queued=%.1fs ran=%.1fs outcome=succeeded",
            job.id,
            job.kind,
            job.user_id,
            queued,
            result.seconds,
        )
        outcome = JobOutcome(
            job,
            entry.engine_job.params,
            stored,
            result.model_hash,
            result.seconds,
            queued,
            await self.credits.balance(job.user_id),
            await self._parent_message(job),
        )
        life.deliver(job.id, post_succeeded(outcome))

    def _write_images(self, job_id: int, result: GenerationResult) -> list[StoredImage]:
        folder = self.images_dir / str(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        stored = []
        written: list[Path] = []
        for idx, image in enumerate(result.images):
            path = folder / f"{idx}-{image.seed}.png"
            written.append(path)
            try:
                path.write_bytes(image.png)
            except OSError:
                # A full disk leaves a truncated PNG: remove what this try wrote, so no
                # half image is ever read back and the space goes to the next job.
                with contextlib.suppress(OSError):
                    for done in written:
                        done.unlink(missing_ok=True)
                    folder.rmdir()  # only when empty: an earlier run's files stay
                raise
            stored.append(
                StoredImage(
                    image.seed,
                    path,
                    image.width,
                    image.height,
                    image.infotext,
                    image.png,
                    image.variation_seed,
                    nsfw=image.nsfw,
                )
            )
        return stored

    # -- a stored result, posted again --------------------------------------------------

    async def redelivery(self, job: Job) -> Post | None:
        try:
            outcome = await self._stored_outcome(job)
        except OSError as error:
            log.warning("job=%s stored result unreadable (%s); not posted", job.id, error)
            return None
        return post_succeeded(outcome)

    async def stored_images(self, job: Job) -> list[StoredImage]:
        """A finished job's images from its rows and files, as the safety review decided
        they may be shown (a blurred image stays blurred); OSError when the files went."""
        rows = await self.jobs.images(job.id)
        pngs = await asyncio.to_thread(lambda: [Path(row.path).read_bytes() for row in rows])
        stored = [
            StoredImage(row.seed, Path(row.path), row.width, row.height, row.infotext, png)
            for row, png in zip(rows, pngs, strict=True)
        ]
        return await self.reviewer.reapply(job.id, stored)

    async def _stored_outcome(self, job: Job) -> JobOutcome:
        params = GenerationParams.from_dict(job.params)
        variations = params.variation_seeds
        stored = [
            replace(image, variation_seed=variations[idx] if idx < len(variations) else None)
            for idx, image in enumerate(await self.stored_images(job))
        ]
        ran = (job.finished_at or job.created_at) - (job.started_at or job.created_at)
        queued = (job.started_at or job.created_at) - job.created_at
        return JobOutcome(
            job,
            params,
            stored,
            None,
            ran,
            queued,
            await self.credits.balance(job.user_id),
            await self._parent_message(job),
        )

    async def _parent_message(self, job: Job) -> int | None:
        """For a job made from another's result (a button): the message showing that one."""
        if job.parent_id is None:
            return None
        parent = await self.jobs.get(job.parent_id)
        return parent.message_id if parent is not None else None


def post_succeeded(outcome: JobOutcome) -> Post:
    async def post(observer: JobObserver) -> int | None:
        return await observer.succeeded(outcome)

    return post


def _rows(job_id: int, stored: list[StoredImage]) -> list[JobImage]:
    return [
        JobImage(
            job_id, idx, image.seed, str(image.path), image.width, image.height, image.infotext
        )
        for idx, image in enumerate(stored)
    ]


def _seconds(results: list[GenerationResult]) -> float:
    return results[0].seconds if results else 0.0

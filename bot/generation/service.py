"""The service layer: the only code that touches both the store and the engine.

Cogs call it with plain values and hear back through a `JobObserver`; the CLI uses the
same service without Discord.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from bot.generation.options import (
    HONOURED_KEYS,
    TRAIN,
    DreamOptions,
    job_kind,
    price_units,
    resolve_options,
    shown_params,
    work_units,
)
from bot.jobs.contracts import (
    AdapterResolver,
    Admission,
    CancelResult,
    Gate,
    IdleWait,
    JobObserver,
    JobOutcome,
    JobRefused,
    QueueEntry,
    Requester,
    Reviewer,
    StoredImage,
    Ticket,
    Trainer,
    plain_wait,
)
from bot.jobs.inputs import InputStore, MissingInput
from bot.jobs.queue import JobQueue, QueuedJob
from bot.settings import Settings
from data.credits import CreditRepository, InsufficientCredits
from data.jobs import (
    DuplicateAction,
    DuplicateInteraction,
    Job,
    JobImage,
    JobRepository,
    JobStatus,
    Origin,
    QueueCaps,
    QueueFull,
)
from data.store import StoreBusy
from engine.api.errors import EngineError, JobCancelled
from engine.api.infotext import params_from_infotext, parse_infotext
from engine.api.jobs import EngineJob, TrainingJob
from engine.api.params import (
    GenerationParams,
    GenerationResult,
    check_params,
)
from engine.api.samplers import DEFAULT_SAMPLER, SAMPLERS
from engine.api.specs import ModelSpec
from engine.worker import EngineWorker

log = logging.getLogger(__name__)

# A job left running by a crash is started again once; a second crash fails it.
MAX_ATTEMPTS = 2
CRASH_MESSAGE = "The bot stopped twice while running this job, so it was given up."
UNREADABLE = "After an update the bot could not read this job back."
INPUT_GONE = "The image this job started from is no longer on the bot's disk."
DISK_FULL = "The bot's disk is full, so the images could not be saved."
NOT_SAVED = "The bot could not save the images to its disk."
STORE_BUSY = "The bot's database was busy for too long, so the result could not be saved."
UNRECORDED = (
    "The bot could not write to its database, so this job could not be finished now; it will"
    " be run again (or refunded) when the bot next starts."
)
# Delivering a result: discord.py has already tried a 5xx or 429 answer again itself (five
# tries over about 25 s) before we hear of it, so these pauses are for an outage, which
# lasts minutes: about 9 minutes over six tries, then the result is given up (it stays
# stored, charged once, its images on disk).
DELIVERY_RETRY_DELAYS = (10.0, 30.0, 60.0, 120.0, 300.0)


class DreamService:
    def __init__(
        self,
        settings: Settings,
        jobs: JobRepository,
        credits: CreditRepository,
        engine: EngineWorker,
        queue: JobQueue | None = None,
        inputs: InputStore | None = None,
    ) -> None:
        self.settings = settings
        self.inputs = inputs or InputStore(settings.inputs_dir)
        self.models: dict[str, ModelSpec] = settings.model_specs()
        self.jobs = jobs
        self.credits = credits
        self.engine = engine
        self.queue = queue or JobQueue()
        self.caps = QueueCaps(settings.max_pending_per_member, settings.max_queued_total)
        self._observers: dict[int, JobObserver] = {}
        # Who hears about a job whose member is no longer waiting on an interaction (jobs
        # restored after a restart): the Discord layer sets it, e.g. to post in the channel.
        self.fallback_observer: Callable[[Job], JobObserver] | None = None
        # Measured speed: seconds per price unit (a 512x512, 20-step image), for wait estimates.
        self.seconds_per_unit: float | None = None
        self._stopping = False
        # Set by stop(): deliveries waiting to try again make their last try at once.
        self._stopped = asyncio.Event()
        # Training jobs stopped by a shutdown, to be resumed; a member's cancel is not one.
        self.paused: set[int] = set()
        self._busy = False
        # How the dispatcher waits for work. A test harness that must tell an idle bot from
        # a busy one (SimCord's `external_wait`) replaces it.
        self.idle_wait: IdleWait = plain_wait
        self._tasks: set[asyncio.Task[None]] = set()
        # A server's rules (bot/community/policy.py) and the safety review
        # (bot/community/safety.py), set by the runner; without them every job is admitted at
        # the bot's prices and posted as is.
        self.gate: Gate | None = None
        self.reviewer: Reviewer | None = None
        self.trainer: Trainer | None = None
        self.adapters: AdapterResolver | None = None
        self._requesters: dict[int, Requester] = {}

    # -- accepting work -------------------------------------------------------------------

    def build_params(self, options: DreamOptions, **mode_fields: Any) -> GenerationParams:
        """Fill the defaults and check everything; InvalidParams names what is wrong.

        `mode_fields` set the image-conditioned modes' parameters (bot/generation/imaging.py).
        """
        return resolve_options(
            options,
            self.models,
            self.settings.default_model,
            self.settings.max_prompt_length,
            self.settings.prompt_syntax,
            mode_fields,
            self.settings.max_upscale_pixels,
        )

    def price(self, params: GenerationParams) -> int:
        """Credits for a job: proportional to pixels x steps x images, never below 1."""
        return max(1, math.ceil(price_units(params) * self.settings.price_per_image - 1e-9))

    def reproduce_params(self, infotext: str) -> tuple[GenerationParams, list[str]]:
        """Parameters to re-run an image from its infotext here, and what could not be honoured.

        A model or sampler this bot does not have is replaced by the default and said so;
        settings of A1111 features this bot does not run (hires fix, LoRAs...) are listed.
        """
        parsed = params_from_infotext(infotext)
        notes = []
        model = parsed.model
        if model not in self.models:
            model = self.settings.default_model
            notes.append(f"Model {parsed.model or '(not named)'} is not on this bot; used {model}.")
        sampler = parsed.sampler
        if sampler not in SAMPLERS:
            sampler = DEFAULT_SAMPLER
            notes.append(f"Sampler {parsed.sampler} is not available; used {sampler}.")
        values = parse_infotext(infotext).values
        ignored = [key for key in values if key not in HONOURED_KEYS]
        ours = "CPU" if self.settings.noise == "cpu" else "GPU"
        if values.get("RNG", "GPU") != ours:
            notes.append(f"Noise is drawn on the {ours} here, not the {values.get('RNG', 'GPU')}.")
        if ignored:
            notes.append(f"Not reproduced: {', '.join(ignored)}.")
        # <lora:name:w> tags stay in the prompt: submit finds those this member may use by
        # name and refuses the others, so a hash from another install is not checked here.
        params = replace(parsed, model=model, sampler=sampler, count=1)
        self.check(params)
        return params, notes

    def check(self, params: GenerationParams) -> None:
        """InvalidParams naming the first value this bot cannot run."""
        check_params(
            params,
            self.models,
            self.settings.max_prompt_length,
            self.settings.max_upscale_pixels,
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
        origin: Origin | None = None,
        requester: Requester | None = None,
        private: bool = False,
    ) -> Ticket:
        """Charge and record the job in one transaction, then queue it.

        `private`: the result goes to the member's DMs, so only they may see it or use its
        buttons (bot.generation.actions checks it on every click).

        Raises JobRefused (the server's rules, caps, credits) having changed nothing. A
        retried interaction gets its existing job back, charged once; so does a second click
        of an action whose first job is still pending (`origin`).
        """
        requester = requester or Requester()
        self.check(params)
        admission = Admission(params, self.price(params), self.caps)
        if self.gate is not None:
            admission = await self.gate.admit(
                params,
                user_id=user_id,
                guild_id=guild_id,
                channel_id=channel_id,
                interaction_id=interaction_id,
                requester=requester,
            )
            params = admission.params
            self.check(params)
        if self.adapters is not None:
            # <lora:name:w> tags and embedding tokens, among the files this member may use;
            # after the server's rules, which may have taken words out of the prompt.
            params = await self.adapters.resolve(params, user_id=user_id, guild_id=guild_id)
        try:
            inputs = await self.inputs.for_params(params)
        except MissingInput:  # a reroll of a result whose input file was removed
            raise JobRefused(INPUT_GONE) from None
        kind = job_kind(params)
        try:
            job = await self.jobs.create(
                kind=kind,
                user_id=user_id,
                guild_id=guild_id,
                channel_id=channel_id,
                interaction_id=interaction_id,
                params=params.to_dict(),
                cost=admission.cost,
                caps=admission.caps,
                origin=origin,
                credit_policy=admission.credit_policy,
                private=private,
            )
        except (DuplicateInteraction, DuplicateAction) as duplicate:
            existing = duplicate.job
            return Ticket(
                existing,
                GenerationParams.from_dict(existing.params),
                self.queue.position(existing.id),
                duplicate=True,
            )
        except (QueueFull, InsufficientCredits) as refused:
            raise JobRefused(str(refused)) from None
        self._requesters[job.id] = requester
        position = self._enqueue(job, params, observer, inputs)
        balance = await self.credits.balance(user_id)
        log.info(
            "job=%s kind=%s user=%s cost=%s queued position=%s",
            job.id,
            kind,
            user_id,
            job.cost,
            position,
        )
        return Ticket(job, params, position, balance, note=admission.note)

    def _enqueue(
        self,
        job: Job,
        params: GenerationParams,
        observer: JobObserver | None,
        inputs: dict[str, bytes],
    ) -> int:
        engine_job = EngineJob(
            job.id, params, report=lambda p: self.report_progress(job.id, p), inputs=inputs
        )
        return self.enqueue_work(job, engine_job, observer)

    def enqueue_work(self, job: Job, work: EngineJob | TrainingJob, observer: Any | None) -> int:
        """Queue a recorded job; `observer` hears of it (bot/training/service.py queues its own)."""
        if observer is not None:
            self._observers[job.id] = observer
        return self.queue.put(QueuedJob(job.id, job.user_id, work, time.monotonic()))

    def report_progress(self, job_id: int, progress: Any) -> None:
        observer = self._observers.get(job_id)
        if observer is not None:
            observer.progress(job_id, progress)

    def take_observer(self, job_id: int) -> Any:
        return self._observers.pop(job_id, None)

    async def _restore_training(self, job: Job) -> None:
        if self.trainer is None:
            raise MissingInput("no trainer to restore a training job")
        await self.trainer.restore(job)

    async def set_message(self, job_id: int, message_id: int) -> None:
        await self.jobs.set_message(job_id, message_id)

    # -- start-up and the dispatcher ------------------------------------------------------

    async def recover(self) -> tuple[list[Job], list[Job]]:
        """Rebuild the queue from the rows a previous run left: (restored, failed).

        Queued jobs go back in line in their order. A job left running by a crash is run
        once more; one that was already retried is failed and refunded, exactly once.
        """
        restored, failed = [], []
        for job in await self.jobs.with_status(JobStatus.QUEUED, JobStatus.RUNNING):
            if job.cancel_requested_at is not None:  # the member was told it stops
                await self._cancel_at_start(job)
                failed.append(job)
                continue
            try:
                if job.kind == TRAIN:
                    params = None
                    inputs = {}
                else:
                    params = GenerationParams.from_dict(job.params)
                    inputs = await self.inputs.for_params(params)
            except (TypeError, MissingInput) as unusable:
                # A row this version cannot read, or its input image is gone: refund it.
                reason = INPUT_GONE if isinstance(unusable, MissingInput) else UNREADABLE
                refunded = await self.jobs.finish(job.id, JobStatus.FAILED, error=reason)
                self._notify_failed(job, reason, refunded)
                failed.append(job)
                continue
            if job.status is JobStatus.RUNNING:
                if job.attempts >= MAX_ATTEMPTS:
                    refunded = await self.jobs.finish(job.id, JobStatus.FAILED, error=CRASH_MESSAGE)
                    log.warning(
                        "job=%s outcome=failed reason=crashed-twice refunded=%s", job.id, refunded
                    )
                    failed.append(job)
                    self._notify_failed(job, CRASH_MESSAGE, refunded)
                    continue
                await self.jobs.requeue(job.id)
            try:
                if params is None:
                    await self._restore_training(job)
                else:
                    observer = self.fallback_observer(job) if self.fallback_observer else None
                    self._enqueue(job, params, observer, inputs)
            except (TypeError, MissingInput):
                refunded = await self.jobs.finish(job.id, JobStatus.FAILED, error=INPUT_GONE)
                self._notify_failed(job, INPUT_GONE, refunded)
                failed.append(job)
                continue
            restored.append(job)
            log.info("job=%s restored to the queue after a restart", job.id)
        return restored, failed

    async def _cancel_at_start(self, job: Job) -> None:
        refunded = await self.jobs.finish(job.id, JobStatus.CANCELLED, error="Cancelled.")
        log.info("job=%s outcome=cancelled before a restart refunded=%s", job.id, refunded)
        if job.kind == TRAIN and self.trainer is not None:
            await self.trainer.discard(job.id)
        self._notify_failed(job, "Cancelled.", refunded)

    async def redeliver(self) -> list[Job]:
        """Post the results a previous run stored but never posted (it died between the
        two, or Discord failed every try), and tell the members whose jobs ended without
        one and who never heard: the outbox, emptied at start-up, before recovery adds to it.
        """
        pending = [job for job in await self.jobs.undelivered() if job.kind != TRAIN]
        for job in pending:
            observer = self.fallback_observer(job) if self.fallback_observer else None
            if observer is None:
                continue
            if job.status is not JobStatus.SUCCEEDED:
                # Refunded in full when it ended (data/jobs.py `finish`), if it was charged.
                reason = job.error or "The job could not be finished."
                self.spawn(self._tell_failed(observer, job, reason, job.cost))
                continue
            try:
                outcome = await self._stored_outcome(job)
            except OSError as error:  # its files went: nothing to post, ever
                log.warning("job=%s stored result unreadable (%s); not posted", job.id, error)
                await self.jobs.mark_delivered(job.id, None)
                continue
            log.info("job=%s result posted after a restart", job.id)
            self.spawn(self.post_result(job.id, partial(observer.succeeded, outcome)))
        return pending

    async def stored_images(self, job: Job) -> list[StoredImage]:
        """A finished job's images from its rows and files, as the safety review decided
        they may be shown (a blurred image stays blurred); OSError when the files went."""
        rows = await self.jobs.images(job.id)
        pngs = await asyncio.to_thread(lambda: [Path(row.path).read_bytes() for row in rows])
        stored = [
            StoredImage(row.seed, Path(row.path), row.width, row.height, row.infotext, png)
            for row, png in zip(rows, pngs, strict=True)
        ]
        if self.reviewer is not None:
            stored = await self.reviewer.reapply(job.id, stored)
        return stored

    async def _stored_outcome(self, job: Job) -> JobOutcome:
        """A succeeded job's outcome rebuilt from its row and files, with the safety review's
        decisions applied again (a blurred image stays blurred)."""
        params = GenerationParams.from_dict(job.params)
        variations = params.variation_seeds
        stored = [
            replace(image, variation_seed=variations[idx] if idx < len(variations) else None)
            for idx, image in enumerate(await self.stored_images(job))
        ]
        parent = await self.jobs.get(job.parent_id) if job.parent_id is not None else None
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
            parent.message_id if parent is not None else None,
        )

    async def run(self) -> None:
        """The dispatcher: one batch at a time to the engine thread, until stop()."""
        while not self._stopping:
            batch = await self.idle_wait(self.queue.take_batch(), reason="waiting for jobs")
            self._busy = True
            try:
                await self.run_batch(batch)
            except Exception:
                # Never let one batch end the dispatcher: fail what it held and go on.
                log.exception("batch %s failed outside the engine", [e.job_id for e in batch])
                for entry in batch:
                    await self._fail_quietly(entry, "Something went wrong storing this job.")
            finally:
                self._busy = False
                self.queue.running = []

    async def stop(self, dispatcher: asyncio.Task[None], grace: float = 120.0) -> None:
        """Stop taking jobs; let the batch on the engine finish (up to `grace` seconds) so a
        clean shutdown is not mistaken for a crash, then stop the dispatcher."""
        self._stopping = True
        self._stopped.set()
        for entry in self.queue.running:
            work = entry.engine_job
            if isinstance(work, TrainingJob) and not work.cancel.is_set():
                # Training can run for an hour: it stops at its next step instead, and the
                # next start resumes it from its last checkpoint (a pause, not a cancel).
                self.paused.add(entry.job_id)
                work.cancel.set()
        if self._busy:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(dispatcher), grace)
        dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dispatcher

    async def run_batch(self, batch: list[QueuedJob]) -> None:
        # Visible as running from the start, so /cancel finds a job while it is claimed.
        self.queue.running = list(batch)
        claimed = []
        for entry in batch:
            try:
                if await self.jobs.mark_running(entry.job_id):
                    claimed.append(entry)
            except StoreBusy as busy:
                # Not claimed, so still queued in the database: back in line, to be claimed
                # once the other connection lets go (its charge, made at submit, stands).
                log.warning("job=%s not claimed (%s); back in the queue", entry.job_id, busy)
                self.queue.put(entry)
        self.queue.running = list(claimed)
        if not claimed:
            return
        if isinstance(claimed[0].engine_job, TrainingJob):  # never batched with anything
            if self.trainer is None:
                raise RuntimeError("a training job was queued without a trainer")
            await self.trainer.run(claimed[0])
            return
        jobs = [entry.engine_job for entry in claimed if isinstance(entry.engine_job, EngineJob)]
        try:
            results = await self.idle_wait(
                self.engine.generate(jobs),
                reason="the engine thread is generating",
            )
        except JobCancelled:
            for entry in claimed:
                self.stop_running(entry)
                await self.fail(entry, "Cancelled.", JobStatus.CANCELLED)
            return
        except EngineError as error:
            for entry in claimed:
                self.stop_running(entry)
                await self.fail(entry, error.user_message)
            return
        total_units = sum(work_units(entry.engine_job) for entry in claimed)
        self._learn_speed(total_units, results[0].seconds if results else 0.0)
        for entry, result in zip(claimed, results, strict=True):
            # Out of `running` before the outcome is decided: a later /cancel is told the
            # job has ended instead of being promised a refund that will not come.
            self.stop_running(entry)
            if entry.engine_job.cancel.is_set():  # cancelled while batched with others
                await self.fail(entry, "Cancelled.", JobStatus.CANCELLED)
            else:
                await self._succeed(entry, result)

    def stop_running(self, entry: QueuedJob) -> None:
        if entry in self.queue.running:
            self.queue.running.remove(entry)

    async def _succeed(self, entry: QueuedJob, result: GenerationResult) -> None:
        assert isinstance(entry.engine_job, EngineJob)
        params = entry.engine_job.params
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
            await self._fail_quietly(entry, DISK_FULL if full else NOT_SAVED)
            return
        requester = self._requesters.pop(entry.job_id, Requester())
        if self.reviewer is not None:
            try:
                stored = await self.idle_wait(
                    self.reviewer.review(entry.job_id, stored, requester),
                    reason="the engine thread is checking the images",
                )
            except JobRefused as withheld:  # nothing posted; failed, so refunded
                await self.fail(entry, str(withheld))
                return
        try:
            completed = await self.jobs.complete(
                entry.job_id,
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
                ],
            )
        except StoreBusy as busy:  # another connection held the lock through every try
            log.warning("job=%s result not stored: %s", entry.job_id, busy)
            await self._fail_quietly(entry, STORE_BUSY)
            return
        if not completed:  # cancelled from the outside while its images were being saved
            log.info("job=%s ended before its result was stored; result dropped", entry.job_id)
            return
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
        balance = await self.credits.balance(job.user_id)
        parent = await self.jobs.get(job.parent_id) if job.parent_id is not None else None
        outcome = JobOutcome(
            job,
            params,
            stored,
            result.model_hash,
            result.seconds,
            queued,
            balance,
            parent.message_id if parent is not None else None,
        )
        observer = self._observers.pop(entry.job_id, None)
        if observer is not None:
            self.spawn(self._deliver(observer, outcome))

    async def _fail_quietly(self, entry: QueuedJob, message: str) -> None:
        """fail(), where whatever goes wrong must not stop the caller."""
        try:
            await self.fail(entry, message)
        except sqlite3.OperationalError as refused:  # StoreBusy, or SQLITE_FULL: a full disk
            # Not even the failure could be written. The row stays pending, so the next
            # start runs it again (or refunds it), exactly once; the member hears so now
            # rather than never.
            log.error(
                "job=%s end not recorded (%s); pending until next start", entry.job_id, refused
            )
            self._requesters.pop(entry.job_id, None)
            observer = self._observers.pop(entry.job_id, None)
            try:
                job = await self.jobs.get(entry.job_id)  # a read: not blocked in WAL mode
            except Exception:
                log.exception("job=%s could not be read back to tell its member", entry.job_id)
                return
            if observer is not None and job is not None:
                self.spawn(observer.failed(job, UNRECORDED, 0))
        except Exception:
            log.exception("job=%s could not be recorded as failed", entry.job_id)

    async def fail(
        self, entry: QueuedJob, message: str, status: JobStatus = JobStatus.FAILED
    ) -> None:
        before = await self.jobs.get(entry.job_id)
        if before is not None and before.status.finished:
            # A batch that failed after this job had ended (its result stored, or cancelled
            # and told so): nothing more to tell.
            return
        refunded = await self.jobs.finish(entry.job_id, status, error=message)
        job = await self.jobs.get(entry.job_id)
        assert job is not None
        log.info(
            "job=%s kind=%s user=%s outcome=%s refunded=%s error=%r",
            job.id,
            job.kind,
            job.user_id,
            status,
            refunded,
            message,
        )
        self._notify_failed(job, message, refunded)

    def _notify_failed(self, job: Job, message: str, refunded: int) -> None:
        self._requesters.pop(job.id, None)
        observer = self._observers.pop(job.id, None)
        if observer is None and self.fallback_observer is not None:
            observer = self.fallback_observer(job)
        if observer is not None:
            self.spawn(self._tell_failed(observer, job, message, refunded))

    async def _tell_failed(
        self, observer: JobObserver, job: Job, message: str, refunded: int
    ) -> None:
        """Tell the member their job ended without a result, then mark it told: a crash
        before that tells them at the next start (`redeliver`)."""
        await observer.failed(job, message, refunded)
        try:
            await self.jobs.mark_delivered(job.id, None)
        except StoreBusy as busy:
            log.warning("job=%s told but not marked: %s", job.id, busy)

    def _learn_speed(self, units: float, seconds: float) -> None:
        """`seconds` for a batch worth `units` standard images."""
        if seconds <= 0:
            return
        sample = seconds / max(units, 1e-6)
        previous = self.seconds_per_unit
        # An exponential moving average: recent jobs count most, one outlier does not rule.
        self.seconds_per_unit = sample if previous is None else 0.7 * previous + 0.3 * sample

    # -- what members can see and do while they wait -------------------------------------

    def queue_entries(self) -> list[QueueEntry]:
        """Everything running (position 0) and waiting, in the order it will be served."""
        entries = [
            QueueEntry(
                q.job_id,
                q.user_id,
                0,
                shown_params(q.engine_job),
                None,
                isinstance(q.engine_job, TrainingJob),
            )
            for q in self.queue.running
        ]
        waited = 0.0
        if self.seconds_per_unit is not None:
            waited = (
                sum(self.seconds_per_unit * work_units(q.engine_job) for q in self.queue.running)
                / 2
            )  # on average a running job is half done
        offset = 1 if self.queue.running else 0
        for index, queued in enumerate(self.queue.in_order()):
            wait = waited if self.seconds_per_unit is not None else None
            entries.append(
                QueueEntry(
                    queued.job_id,
                    queued.user_id,
                    index + 1 + offset,
                    shown_params(queued.engine_job),
                    wait,
                    isinstance(queued.engine_job, TrainingJob),
                )
            )
            if self.seconds_per_unit is not None:
                waited += self.seconds_per_unit * work_units(queued.engine_job)
        return entries

    async def cancel(
        self,
        job_id: int,
        *,
        by_user: int,
        is_admin: bool,
        guild_id: int | None = None,
        is_owner: bool = False,
    ) -> CancelResult:
        """Cancel a queued job at once, or a running one within a step; refunded either way.

        Admins may cancel others' jobs of the server they are admins in; owners any job.
        """
        job = await self.jobs.get(job_id)
        if job is None:
            raise JobRefused(f"There is no job {job_id}.")
        admin_here = is_owner or (is_admin and guild_id is not None and job.guild_id == guild_id)
        if job.user_id != by_user and not admin_here:
            raise JobRefused(f"Job {job_id} is not yours to cancel.")
        if job.status.finished:
            raise JobRefused(f"Job {job_id} has already {job.status.value}; nothing to cancel.")
        waiting = self.queue.remove(job_id)
        if waiting is not None:
            refunded = await self.jobs.finish(job_id, JobStatus.CANCELLED, error="Cancelled.")
            self._notify_failed(job, "Cancelled.", refunded)
            if isinstance(waiting.engine_job, TrainingJob) and self.trainer is not None:
                await self.trainer.discard(job_id)
            return CancelResult(job_id, f"Job {job_id} was cancelled.", refunded)
        running = next((q for q in self.queue.running if q.job_id == job_id), None)
        if running is None:
            raise JobRefused(f"Job {job_id} is not in the queue any more.")
        self.paused.discard(job_id)  # the member's cancel wins over a shutdown's pause
        # In the row before the member hears it: if the bot dies before the engine's next
        # step, start-up refunds the job instead of running it again.
        await self.jobs.request_cancel(job_id)
        running.engine_job.cancel.set()  # the engine stops at its next step
        return CancelResult(
            job_id,
            f"Job {job_id} is stopping; you will be told when it has, and refunded if it "
            "had not finished.",
        )

    async def _deliver(self, observer: JobObserver, outcome: JobOutcome) -> None:
        await self.post_result(outcome.job.id, lambda: observer.succeeded(outcome))

    async def post_result(self, job_id: int, post: Callable[[], Awaitable[int | None]]) -> None:
        """Post a stored result with `post` (which returns the id of the message holding it),
        trying again with growing pauses while Discord fails; then remember the message.

        The job has succeeded and was charged once before this runs; nothing here touches
        the ledger, so a try that fails, or a result given up, costs nothing more.
        """
        delays = iter(DELIVERY_RETRY_DELAYS)
        attempt = 1
        while True:
            try:
                message_id = await post()
                break
            except Exception as error:
                delay = next(delays, None)
                if delay is None or self._stopping or not worth_retrying(error):
                    log.error(
                        "job=%s result not delivered after %d attempt(s) (%s: %s); it stays"
                        " stored with its images",
                        job_id,
                        attempt,
                        type(error).__name__,
                        error,
                        exc_info=_is_bug(error),
                    )
                    return
                # discord.RateLimited says how long to wait: not sooner, nor past our longest.
                asked = float(getattr(error, "retry_after", 0.0) or 0.0)
                delay = min(max(delay, asked), DELIVERY_RETRY_DELAYS[-1])
                log.warning(
                    "job=%s delivery attempt %d failed (%s: %s); trying again in %.0fs",
                    job_id,
                    attempt,
                    type(error).__name__,
                    error,
                    delay,
                )
                # Declared idle: a test harness moves its clock past the pause instead of
                # waiting it out.
                await self.idle_wait(self._pause(delay), reason=f"job {job_id} delivery retry")
                attempt += 1
        if attempt > 1:
            log.info("job=%s result delivered on attempt %d", job_id, attempt)
        try:
            # Marked once posted, never before: a crash in between posts it again at the
            # next start (Discord's nonce folds a quick second post of a restored result
            # into the first), while marking first could lose it.
            await self.jobs.mark_delivered(job_id, message_id)
        except StoreBusy as busy:
            log.warning("job=%s posted but not marked delivered: %s", job_id, busy)

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or until stop(): a shutdown does not wait out a delivery's pause."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopped.wait()

    def _write_images(self, job_id: int, result: GenerationResult) -> list[StoredImage]:
        folder = self.settings.images_dir / str(job_id)
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
                )
            )
        return stored

    def spawn(self, delivery: Coroutine[Any, Any, None]) -> None:
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


def worth_retrying(error: Exception) -> bool:
    """Whether posting a result again may go better. A 4xx other than 429 (a permission
    missing, the channel deleted, a payload refused) will be answered the same way; a 5xx,
    a 429, a dropped connection or a timeout may not."""
    status = getattr(error, "status", None)  # discord.HTTPException, aiohttp's errors
    if isinstance(status, int):
        return status >= 500 or status == 429
    return not _is_bug(error)


def _is_bug(error: Exception) -> bool:
    """Ours, not Discord's: it fails the same way every time, so it is logged with its
    traceback and not tried again."""
    return isinstance(error, TypeError | ValueError | AttributeError | LookupError)

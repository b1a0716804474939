"""The scheduler: jobs of every kind queued fairly, dispatched to the engine one batch at a
time, cancelled, and ended exactly once. It knows a job only through its kind's handler
(bot/jobs/kinds.py); what a kind does with the engine is the handler's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from bot.jobs.audience import Audience
from bot.jobs.contracts import (
    CancelResult,
    IdleWait,
    JobObserver,
    JobRefused,
    QueueEntry,
    Requester,
    plain_wait,
)
from bot.jobs.delivery import Outbox
from bot.jobs.kinds import JobHandler, JobKind, Post, Work
from bot.jobs.pace_notices import PaceNotices
from bot.jobs.queue import JobQueue, QueuedJob
from bot.jobs.waits import Waits
from data.jobs import Job, JobRepository, JobStatus
from data.store import StoreBusy
from engine.api.port import EnginePort

log = logging.getLogger(__name__)

T = TypeVar("T")

UNRECORDED = (
    "The bot could not write to its database, so this job could not be finished now; it will"
    " be run again (or refunded) when the bot next starts."
)
BATCH_BROKE = "Something went wrong storing this job."


class Scheduler:
    def __init__(
        self,
        jobs: JobRepository,
        queue: JobQueue,
        handlers: Mapping[JobKind, JobHandler],
        engine: EnginePort,
        idle_wait: IdleWait = plain_wait,
    ) -> None:
        self.jobs = jobs
        self.engine = engine
        self.queue = queue
        self.handlers = dict(handlers)
        self.outbox = Outbox(jobs, idle_wait)
        self.audience = Audience()
        self.waits = Waits(self.handlers, lambda: self.engine.pace())
        self.pace_notices = PaceNotices(self)  # waiting members told of pauses, with run()
        self._stopping = False
        self._batches: set[asyncio.Task[None]] = set()  # running, each in an engine slot
        self._paused: set[int] = set()  # stopped by a shutdown, to resume at the next start

    @property
    def idle_wait(self) -> IdleWait:
        """How the dispatcher waits for work and for the engine. A test harness that must
        tell an idle bot from a busy one (SimCord's `external_wait`) passes its own."""
        return self.outbox.idle_wait

    @idle_wait.setter
    def idle_wait(self, wait: IdleWait) -> None:
        self.outbox.idle_wait = wait

    # -- who hears about a job ----------------------------------------------------------

    def hear_restored(self, kind: JobKind, observer: Callable[[Job], Any] | None) -> None:
        """Who tells members about `kind` jobs nobody waits on any more (after a restart);
        None when the cog that told them is unloaded."""
        self.audience.hear_restored(kind, observer)

    def report_progress(self, job_id: int, progress: Any) -> None:
        observer = self.audience.observer(job_id)
        if observer is not None:
            observer.progress(job_id, progress)

    def take_requester(self, job_id: int) -> Requester:
        return self.audience.take_requester(job_id)

    def deliver(self, job_id: int, post: Post) -> None:
        observer = self.audience.take_observer(job_id)
        if observer is not None:
            self.outbox.spawn(self.outbox.post_result(job_id, lambda: post(observer)))

    async def set_message(self, job_id: int, message_id: int) -> None:
        await self.outbox.set_message(job_id, message_id)

    # -- queueing -----------------------------------------------------------------------

    def enqueue(
        self,
        job: Job,
        work: Work,
        observer: Any | None,
        requester: Requester | None = None,
    ) -> int:
        """Queue a recorded job; `observer` hears of it. Returns its place in line."""
        self.audience.listen(job.id, observer, requester)
        # Looked up when the engine reports, so whatever wraps report_progress sees it.
        work.report = lambda progress: self.report_progress(job.id, progress)
        return self.queue.put(
            QueuedJob(job.id, job.user_id, work, time.monotonic(), JobKind.of(job))
        )

    def queue_entries(self) -> list[QueueEntry]:
        """Everything running (position 0) and waiting, in the order it will be served."""
        return self.waits.entries(self.queue)

    def learned(self, units: float, seconds: float) -> None:
        self.waits.learned(units, seconds)

    # -- the dispatcher -----------------------------------------------------------------

    async def idle(self, awaitable: Awaitable[T], *, reason: str) -> T:
        return await self.idle_wait(awaitable, reason=reason)

    async def run(self) -> None:
        """The dispatcher: each batch, in the queue's fair order, to its kind's handler as
        soon as the engine has a free slot (one for the engine thread, one per idle GPU
        worker with Redis), until stop(); members of waiting jobs hear of pauses meanwhile."""
        async with self.pace_notices.watching():
            while not self._stopping:
                release = await self.idle(self.engine.free_slot(), reason="waiting for a free GPU")
                try:
                    batch = await self.idle(self.queue.take_batch(), reason="waiting for jobs")
                except BaseException:
                    release()
                    raise
                task = asyncio.create_task(self._run_in_slot(batch, release))
                self._batches.add(task)
                task.add_done_callback(self._batches.discard)

    async def _run_in_slot(self, batch: list[QueuedJob], release: Callable[[], None]) -> None:
        try:
            await self.run_batch(batch)
        except Exception:
            # Never let one batch end the dispatcher: fail what it held and go on.
            log.exception("batch %s failed outside the engine", [e.job_id for e in batch])
            for entry in batch:
                await self.fail_quietly(entry, BATCH_BROKE)
        finally:
            for entry in batch:
                self.stop_running(entry)
            release()

    async def run_batch(self, batch: list[QueuedJob]) -> None:
        # Visible as running from the start, so /cancel finds a job while it is claimed.
        self.queue.running.extend(batch)
        claimed = []
        for entry in batch:
            try:
                if await self.jobs.mark_running(entry.job_id):
                    claimed.append(entry)
                    continue
            except StoreBusy as busy:
                # Not claimed, so still queued in the database: back in line, to be claimed
                # once the other connection lets go (its charge, made at submit, stands).
                log.warning("job=%s not claimed (%s); back in the queue", entry.job_id, busy)
                self.queue.put(entry)
            self.stop_running(entry)
        if claimed:
            await self.handlers[claimed[0].kind].run(claimed, self)

    def stop_running(self, entry: QueuedJob) -> None:
        if entry in self.queue.running:
            self.queue.running.remove(entry)

    def paused(self, job_id: int) -> bool:
        return job_id in self._paused

    async def stop(self, dispatcher: asyncio.Task[None], grace: float = 120.0) -> None:
        """Stop taking jobs; let the batch on the engine finish (up to `grace` seconds) so a
        clean shutdown is not mistaken for a crash, then stop the dispatcher."""
        self._stopping = True
        self.outbox.stop()
        for entry in self.queue.running:
            work = entry.engine_job
            if self.handlers[entry.kind].pauses_on_shutdown and not work.cancel.is_set():
                # It stops at its next step instead, and the next start resumes it from its
                # last checkpoint (a pause, not a cancel).
                self._paused.add(entry.job_id)
                work.cancel.set()
        if self._batches:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(list(self._batches), timeout=grace)
        dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dispatcher

    async def drain(self) -> None:
        """Wait for outcome deliveries in flight (used at shutdown and by tests)."""
        await self.outbox.drain()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.drain()

    # -- ending jobs --------------------------------------------------------------------

    async def fail(self, entry: QueuedJob, message: str, *, cancelled: bool = False) -> None:
        before = await self.jobs.get(entry.job_id)
        if before is not None and before.status.finished:
            # A batch that failed after this job had ended (its result stored, or cancelled
            # and told so): nothing more to tell.
            return
        status = JobStatus.CANCELLED if cancelled else JobStatus.FAILED
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
        self.notify_failed(job, message, refunded)

    async def fail_quietly(self, entry: QueuedJob, message: str) -> None:
        try:
            await self.fail(entry, message)
        except sqlite3.OperationalError as refused:  # StoreBusy, or SQLITE_FULL: a full disk
            # Not even the failure could be written. The row stays pending, so the next
            # start runs it again (or refunds it), exactly once; the member hears so now
            # rather than never.
            log.error(
                "job=%s end not recorded (%s); pending until next start", entry.job_id, refused
            )
            observer = self.audience.forget(entry.job_id)
            try:
                job = await self.jobs.get(entry.job_id)  # a read: not blocked in WAL mode
            except Exception:
                log.exception("job=%s could not be read back to tell its member", entry.job_id)
                return
            if observer is not None and job is not None:
                self.outbox.spawn(observer.failed(job, UNRECORDED, 0))
        except Exception:
            log.exception("job=%s could not be recorded as failed", entry.job_id)

    def notify_failed(self, job: Job, message: str, refunded: int) -> None:
        observer: JobObserver | None = self.audience.forget(job.id) or self.audience.fallback(job)
        if observer is not None:
            self.outbox.tell_failed(observer, job, message, refunded)

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
        check_may_cancel(
            job_id, job, by_user, is_admin and guild_id is not None, guild_id, is_owner
        )
        assert job is not None
        waiting = self.queue.remove(job_id)
        if waiting is not None:
            refunded = await self.jobs.finish(job_id, JobStatus.CANCELLED, error="Cancelled.")
            self.notify_failed(job, "Cancelled.", refunded)
            await self.handlers[waiting.kind].discard(job_id)
            return CancelResult(job_id, f"Job {job_id} was cancelled.", refunded)
        running = next((q for q in self.queue.running if q.job_id == job_id), None)
        if running is None:
            raise JobRefused(f"Job {job_id} is not in the queue any more.")
        self._paused.discard(job_id)  # the member's cancel wins over a shutdown's pause
        # In the row before the member hears it: if the bot dies before the engine's next
        # step, start-up refunds the job instead of running it again.
        await self.jobs.request_cancel(job_id)
        running.engine_job.cancel.set()  # the engine stops at its next step
        return CancelResult(
            job_id,
            f"Job {job_id} is stopping; you will be told when it has, and refunded if it "
            "had not finished.",
        )


def check_may_cancel(
    job_id: int,
    job: Job | None,
    by_user: int,
    is_admin: bool,
    guild_id: int | None,
    is_owner: bool,
) -> None:
    """JobRefused unless `by_user` may cancel the job now: theirs, or they are an admin of
    its server (asking from there) or an owner, and it has not ended."""
    if job is None:
        raise JobRefused(f"There is no job {job_id}.")
    admin_here = is_owner or (is_admin and job.guild_id == guild_id)
    if job.user_id != by_user and not admin_here:
        raise JobRefused(f"Job {job_id} is not yours to cancel.")
    if job.status.finished:
        raise JobRefused(f"Job {job_id} has already {job.status.value}; nothing to cancel.")

"""Start-up: what a previous run left is told, queued again or ended, exactly once.

The outbox first (`redeliver`): results stored but never posted are posted, and members
whose jobs ended without one and who never heard are told. Then `recover` rebuilds the
queue from the pending rows, in their order; a job left running by a crash runs once more.
"""

from __future__ import annotations

import logging
from functools import partial

from bot.jobs.kinds import JobKind, Unrestorable
from bot.jobs.scheduler import Scheduler
from data.jobs import Job, JobStatus

log = logging.getLogger(__name__)

# A job left running by a crash is started again once; a second crash fails it.
MAX_ATTEMPTS = 2
CRASH_MESSAGE = "The bot stopped twice while running this job, so it was given up."


async def redeliver(scheduler: Scheduler) -> list[Job]:
    """Post or tell what a previous run ended but never told; returns those jobs."""
    told = []
    for job in await scheduler.jobs.undelivered():
        observer = scheduler.audience.fallback(job)
        if observer is None:
            continue
        if job.status is not JobStatus.SUCCEEDED:
            # Refunded in full when it ended (data/jobs.py `finish`), if it was charged.
            reason = job.error or "The job could not be finished."
            scheduler.outbox.tell_failed(observer, job, reason, job.cost)
            told.append(job)
            continue
        post = await scheduler.handlers[JobKind.of(job)].redelivery(job)
        if post is None:  # its files went: nothing to post, ever
            await scheduler.jobs.mark_delivered(job.id, None)
            continue
        log.info("job=%s result posted after a restart", job.id)
        outbox = scheduler.outbox
        outbox.spawn(outbox.post_result(job.id, partial(post, observer)))
        told.append(job)
    return told


async def recover(scheduler: Scheduler) -> tuple[list[Job], list[Job]]:
    """Rebuild the queue from the rows a previous run left: (restored, failed).

    Queued jobs go back in line in their order. A job left running by a crash is run
    once more; one that was already retried is failed and refunded, exactly once.
    """
    restored, failed = [], []
    for job in await scheduler.jobs.with_status(JobStatus.QUEUED, JobStatus.RUNNING):
        if await _restore(scheduler, job):
            restored.append(job)
        else:
            failed.append(job)
    return restored, failed


async def _restore(scheduler: Scheduler, job: Job) -> bool:
    handler = scheduler.handlers[JobKind.of(job)]
    if job.cancel_requested_at is not None:  # the member was told it stops
        refunded = await scheduler.jobs.finish(job.id, JobStatus.CANCELLED, error="Cancelled.")
        log.info("job=%s outcome=cancelled before a restart refunded=%s", job.id, refunded)
        await handler.discard(job.id)
        scheduler.notify_failed(job, "Cancelled.", refunded)
        return False
    try:
        work = await handler.restore(job)
    except Unrestorable as unusable:  # a row this version cannot read, or its input is gone
        await _give_up(scheduler, job, str(unusable))
        return False
    if job.status is JobStatus.RUNNING:
        if job.attempts >= MAX_ATTEMPTS:
            log.warning("job=%s outcome=failed reason=crashed-twice", job.id)
            await _give_up(scheduler, job, CRASH_MESSAGE)
            return False
        await scheduler.jobs.requeue(job.id)
    scheduler.enqueue(job, work, scheduler.audience.fallback(job))
    log.info("job=%s restored to the queue after a restart", job.id)
    return True


async def _give_up(scheduler: Scheduler, job: Job, reason: str) -> None:
    refunded = await scheduler.jobs.finish(job.id, JobStatus.FAILED, error=reason)
    log.info("job=%s outcome=failed at start-up refunded=%s: %s", job.id, refunded, reason)
    scheduler.notify_failed(job, reason, refunded)

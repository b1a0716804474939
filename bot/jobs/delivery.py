"""Telling members how their jobs ended: posts retried while Discord fails, on tasks of
their own so a slow Discord call never holds up the GPU, and remembered once made.

The job has ended (succeeded and charged once, or refunded) before anything here runs;
nothing here touches the ledger, so a try that fails, or a result given up, costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from bot.jobs.contracts import IdleWait, JobObserver
from data.jobs import Job, JobRepository
from data.store import StoreBusy

log = logging.getLogger(__name__)

# discord.py has already tried a 5xx or 429 answer again itself (five tries over about
# 25 s) before we hear of it, so these pauses are for an outage, which lasts minutes:
# about 9 minutes over six tries, then the result is given up (it stays stored, charged
# once, its images on disk).
DELIVERY_RETRY_DELAYS = (10.0, 30.0, 60.0, 120.0, 300.0)


class Outbox:
    def __init__(self, jobs: JobRepository, idle_wait: IdleWait) -> None:
        self._jobs = jobs
        # How a pause between tries is awaited: a test harness moves its clock past it.
        self.idle_wait = idle_wait
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()  # set by stop(): waiting tries make their last now
        # Where each job's message is already recorded (set_message), so posting the result
        # into that same message does not write it again.
        self._messages: dict[int, int] = {}

    async def set_message(self, job_id: int, message_id: int) -> None:
        """The message that shows the job while it waits (and later its result)."""
        await self._jobs.set_message(job_id, message_id)
        self._messages[job_id] = message_id

    def spawn(self, delivery: Coroutine[Any, Any, None]) -> None:
        async def deliver() -> None:
            try:
                await delivery
            except Exception:
                log.exception("delivering a job's outcome failed")

        task = asyncio.create_task(deliver())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def tell_failed(self, observer: JobObserver, job: Job, message: str, refunded: int) -> None:
        self.spawn(self._tell_failed(observer, job, message, refunded))

    async def _tell_failed(
        self, observer: JobObserver, job: Job, message: str, refunded: int
    ) -> None:
        """Tell the member their job ended without a result, then mark it told: a crash
        before that tells them at the next start (bot/jobs/recovery.py)."""
        await observer.failed(job, message, refunded)
        self._messages.pop(job.id, None)
        try:
            await self._jobs.mark_delivered(job.id, None)
        except StoreBusy as busy:
            log.warning("job=%s told but not marked: %s", job.id, busy)

    async def post_result(self, job_id: int, post: Callable[[], Awaitable[int | None]]) -> None:
        """Post a stored result with `post` (which returns the id of the message holding it),
        trying again with growing pauses while Discord fails; then remember the message."""
        delays = iter(DELIVERY_RETRY_DELAYS)
        attempt = 1
        while True:
            try:
                message_id = await post()
                break
            except Exception as error:
                delay = next(delays, None)
                if delay is None or self._stopped.is_set() or not worth_retrying(error):
                    log.error(
                        "job=%s result not delivered after %d attempt(s) (%s: %s); it stays"
                        " stored with its images",
                        job_id,
                        attempt,
                        type(error).__name__,
                        error,
                        exc_info=is_bug(error),
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
        known = self._messages.pop(job_id, None)
        try:
            # Marked once posted, never before: a crash in between posts it again at the
            # next start (Discord's nonce folds a quick second post of a restored result
            # into the first), while marking first could lose it.
            await self._jobs.mark_delivered(job_id, None if message_id == known else message_id)
        except StoreBusy as busy:
            log.warning("job=%s posted but not marked delivered: %s", job_id, busy)

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or until stop(): a shutdown does not wait out a delivery's pause."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopped.wait()

    def stop(self) -> None:
        self._stopped.set()

    async def drain(self) -> None:
        """Wait for deliveries in flight (at shutdown, and in tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def worth_retrying(error: Exception) -> bool:
    """Whether posting a result again may go better. A 4xx other than 429 (a permission
    missing, the channel deleted, a payload refused) will be answered the same way; a 5xx,
    a 429, a dropped connection or a timeout may not."""
    status = getattr(error, "status", None)  # discord.HTTPException, aiohttp's errors
    if isinstance(status, int):
        return status >= 500 or status == 429
    return not is_bug(error)


def is_bug(error: Exception) -> bool:
    """Ours, not Discord's: it fails the same way every time, so it is logged with its
    traceback and not tried again."""
    return isinstance(error, TypeError | ValueError | AttributeError | LookupError)

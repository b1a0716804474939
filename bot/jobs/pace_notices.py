"""Members whose jobs wait hear when the queue pauses and when it goes on again.

One task, run for as long as the scheduler's dispatcher, waits on the engine's pace (GPU
workers' Redis stops or starts answering: bot/fleet/watch.py) and tells the observer of
each job still waiting where it stands now. The engine thread in this process never
pauses: there the task only waits, and nobody is told anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from bot.jobs.contracts import QueueEntry

if TYPE_CHECKING:
    from bot.jobs.scheduler import Scheduler

log = logging.getLogger(__name__)


class PaceNotices:
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """Members are told of each pause and resume while the block runs."""
        task = asyncio.create_task(self.run(), name="sd-pace-notices")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        scheduler = self._scheduler
        seen = scheduler.engine.pace()
        while True:
            seen = await scheduler.idle(
                scheduler.engine.pace_changed(seen), reason="waiting for the queue to pause"
            )
            try:
                # Awaited before waiting again: a flip back while these edits were under
                # way is seen at once then, so every message ends showing the last state.
                await self.tell_waiting()
            except Exception:
                log.exception("the waiting jobs could not be told that the queue paused or went on")

    async def tell_waiting(self) -> None:
        """Each waiting job's observer hears its position now and whether the queue is
        paused, all at once (one edit of each message; a running job is not told)."""
        scheduler = self._scheduler
        waiting = [entry for entry in scheduler.queue_entries() if entry.position > 0]
        told = []
        for entry in waiting:
            observer = scheduler.audience.observer(entry.job_id)
            if observer is not None:
                told.append(self._tell(observer, entry))
        await asyncio.gather(*told)

    async def _tell(self, observer: Any, entry: QueueEntry) -> None:
        try:
            await observer.waiting(entry)
        except Exception:  # one member's message must not keep the others from theirs
            log.exception("job=%s: its member could not be told the queue's pause", entry.job_id)

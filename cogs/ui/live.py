"""The live message of a job: its queue position, then its progress, edited as it runs."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

import discord

from bot.jobs.contracts import QueueEntry, Ticket
from bot.jobs.waits import PAUSED
from cogs.ui.rendering import credits_text, describe, png_file
from engine.api.params import Progress

log = logging.getLogger(__name__)

PROGRESS_BAR_WIDTH = 12


def progress_line(progress: Progress) -> str:
    filled = round(progress.fraction * PROGRESS_BAR_WIDTH)
    bar = "█" * filled + "░" * (PROGRESS_BAR_WIDTH - filled)
    if progress.step == 0:
        return "Starting…"
    return f"`{bar}` step {progress.step}/{progress.total} ({progress.fraction:.0%})"


def with_pause(note: str, paused: bool) -> str:
    """What a waiting job's member reads after its position: `note`, and while the queue is
    paused the sentence that says so."""
    return " ".join(part for part in (note, PAUSED if paused else "") if part)


class LiveMessage:
    """A message that shows one job while it waits and runs; all edits go through a lock.

    Progress edits are throttled to one per `interval` seconds and only when the text
    changes (Discord rate-limits edits per route); the final edit always wins. Subclasses
    say how the message is written.
    """

    def __init__(self, interval: float, note: str = "") -> None:
        self.interval = interval
        self.note = note
        self._lock = asyncio.Lock()
        self._finished = False
        self._last_text = ""
        self._last_edit = float("-inf")
        self._editing = False
        self._preview: bytes | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Latent previews show the picture before the safety review has seen it: off where
        # the review applies (see `previews_allowed` in cogs/ui/presenter.py).
        self.previews = True
        self._ticket: Ticket | None = None  # as the queued message shows it
        # The queue paused or went on after the ticket was made: newer than its `paused`.
        self._paused: bool | None = None
        self._started = False  # progress came: never shown as queued again

    async def _write(self, **kwargs: Any) -> discord.Message | None:
        raise NotImplementedError

    def queued_text(self, ticket: Ticket) -> str:
        money = f" Cost {credits_text(ticket.job.cost)}"
        money += f", balance {ticket.balance}." if ticket.balance is not None else "."
        notes = with_pause(self.note, ticket.paused)
        note = f"\n{notes}" if notes else ""
        return f"Queued: position {ticket.position}. {describe(ticket.params)}.{money}{note}"

    async def queued(self, ticket: Ticket) -> int | None:
        """Show the queue position; returns the id of the message the job lives in."""
        if self._paused is not None:
            ticket = replace(ticket, paused=self._paused)
        self._ticket = ticket
        message = await self._edit(self.queued_text(ticket))
        return message.id if message is not None else None

    async def waiting(self, entry: QueueEntry) -> None:
        """The queue paused or went on: the queued message shows the position now, and the
        paused sentence only while it is paused. One edit, none when nothing changed."""
        self._paused = entry.paused
        if self._ticket is None:  # not shown yet: queued() shows it as it is now
            return
        self._ticket = replace(self._ticket, position=entry.position, paused=entry.paused)
        text = self.queued_text(self._ticket)
        if text != self._last_text:
            await self._edit(text, queued=True)

    def progress_text(self, progress: Any) -> str:
        return progress_line(progress)

    def progress(self, job_id: int, progress: Any) -> None:
        self._started = True
        preview = getattr(progress, "preview_png", None)
        if preview is not None and self.previews:
            self._preview = preview
        text = self.progress_text(progress)
        if self._finished or self._editing or text == self._last_text:
            return
        if time.monotonic() - self._last_edit < self.interval:
            return
        self._editing = True
        task = asyncio.create_task(self._progress_edit(text))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _progress_edit(self, text: str) -> None:
        try:
            preview, self._preview = self._preview, None
            if preview is None:
                await self._edit(text)
            else:
                await self._edit(text, attachments=[png_file(preview, "preview.png")])
        finally:
            self._editing = False

    async def _edit(
        self, text: str, *, queued: bool = False, **kwargs: Any
    ) -> discord.Message | None:
        """`queued`: the text says the job waits, which is wrong once it has started (a
        pause's edit that waited on the lock behind the first progress)."""
        async with self._lock:
            if self._finished or (queued and self._started):
                return None
            self._last_text = text
            self._last_edit = time.monotonic()
            try:
                return await self._write(content=self.decorate(text), **kwargs)
            except discord.HTTPException as error:
                log.warning("progress edit failed: %s", error)
                return None

    def decorate(self, text: str) -> str:
        return text

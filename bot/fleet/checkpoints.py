"""A /train job's checkpoint, kept where every machine of the fleet can reach it.

The worker that trains writes a checkpoint every `checkpoint_every` steps on its own disk
(engine/training/checkpoint.py). It copies each one to Redis under
`sdbot:checkpoint:<job id>` and then tells the bot, which copies it into the job's folder
on its own disk, as if its engine thread had written it. A worker that dies leaves the
latest in Redis, and the worker that takes its batch starts from there. A bot that comes
back to a Redis without it (restarted without its data, or the key expired) puts its
own copy back before sending the job again. The checkpoint names its job (its
fingerprint): a stale or foreign one is ignored by the trainer, never trusted.

A checkpoint is rewritten while it is copied, so a copy never reads one chunk at a time
(a new version could land between two reads): it is written under a key of its own and
renamed over the old, and read with one LRANGE, which Redis answers atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from bot.fleet.files import CHUNK_BYTES
from engine.api.files import write_atomically

log = logging.getLogger(__name__)

CHECKPOINTS = "sdbot:checkpoint:"  # + job id: the job's latest checkpoint, a list of chunks
# Kept this long after its last write (a cancelled job's is left to expire); a training put
# back by a longer shutdown resumes from the bot's own copy, put back in Redis by `offer`.
CHECKPOINT_TTL_SECONDS = 24 * 3600
# Redis's and the disk's errors: a copy that fails costs at most the steps since the last.
COPY_ERRORS = (RedisError, ConnectionError, OSError)


def key(job_id: int) -> str:
    return f"{CHECKPOINTS}{job_id}"


async def put(db: Any, job_id: int, path: Path) -> bool:
    """The checkpoint at `path` in Redis as the job's latest; False when there is none."""
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        return False
    staging = f"{key(job_id)}:upload:{uuid.uuid4().hex}"
    pipe = db.pipeline(transaction=True)
    for start in range(0, max(len(data), 1), CHUNK_BYTES):
        pipe.rpush(staging, data[start : start + CHUNK_BYTES])
    pipe.rename(staging, key(job_id))  # a reader sees the old version or this one, whole
    pipe.expire(key(job_id), CHECKPOINT_TTL_SECONDS)
    await pipe.execute()
    return True


async def get(db: Any, job_id: int, path: Path) -> bool:
    """The job's latest checkpoint from Redis at `path` (replaced atomically); False when
    Redis has none."""
    chunks = await db.lrange(key(job_id), 0, -1)
    if not chunks:
        return False
    await asyncio.to_thread(write_atomically, path, b"".join(chunks))
    return True


async def offer(db: Any, job_id: int, path: Path) -> None:
    """The bot's copy in Redis when Redis has none of the job's (lost with its data, or
    expired): the job is about to be sent, and its worker resumes from Redis's."""
    if await asyncio.to_thread(path.is_file) and not await db.exists(key(job_id)):
        await put(db, job_id, path)
        log.info("job=%s checkpoint put back in Redis from the bot's copy", job_id)


async def forget(db: Any, job_id: int) -> None:
    """The job ended: its checkpoint is of no more use (a failed delete expires)."""
    with contextlib.suppress(*COPY_ERRORS):
        await db.delete(key(job_id))


class Relay:
    """Copies a file that is rewritten now and then, one copy at a time: a rewrite during
    a copy is copied once more after it, and every `changed` is followed, once a copy
    that started after it has ended, by its `then`. A failed copy is logged and left to
    the next one (the checkpoint after it)."""

    def __init__(self, copy: Callable[[], Awaitable[object]], what: str) -> None:
        self._copy = copy
        self._what = what
        self._waiting: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self.copies = 0

    def changed(self, then: Callable[[], None] = lambda: None) -> None:
        self._waiting.append(then)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"sd-copy {self._what}")

    async def _run(self) -> None:
        while self._waiting:
            thens, self._waiting = self._waiting, []
            try:
                await self._copy()
            except COPY_ERRORS as error:
                log.warning(
                    "copying %s failed (%s); the next checkpoint is copied", self._what, error
                )
                continue
            self.copies += 1
            for then in thens:
                then()

    async def flush(self) -> None:
        """Wait for the copies asked for so far (a paused training keeps its latest)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def close(self) -> None:
        """No more copies: the job ended, its checkpoint is of no use."""
        self._waiting.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

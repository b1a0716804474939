"""A batch whose worker died, taken over by a live worker.

A worker renews its claim on the batch it runs every lease / 3, so an entry idle for
longer than the lease belongs to a worker that stopped, and XAUTOCLAIM hands it to the
worker that asks. Asking costs a round trip per stream; before every read it sat on the
path between two batches, for entries that can only be taken once a lease is over anyway.
So a worker asks LOOKS_PER_LEASE times a lease: a batch runs again at most lease / 4 after
its lease ran out (lease + lease / 4 after its worker's death at worst).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from bot.fleet import protocol

log = logging.getLogger(__name__)

LOOKS_PER_LEASE = 4


class Takeover:
    """When a worker next looks for batches their workers left, and the look itself."""

    def __init__(self, db: Any, consumer: str, lease: float) -> None:
        self.db = db
        self.consumer = consumer
        self.lease = lease
        self._due = 0.0  # at once: a worker started to replace a dead one looks first
        self.looks = 0

    def wait_ms(self, longest: int) -> int:
        """How long a blocking read may wait (ms, at least 1: 0 would be forever) without
        putting off the next look."""
        until_due = int((self._due - time.monotonic()) * 1000)
        return max(1, min(longest, until_due))

    async def take(self, streams: Sequence[str]) -> tuple[str, bytes, dict[Any, Any]] | None:
        """A batch a dead worker left, now this worker's, when it is time to look; None when
        it is not, or there is none. RedisError (NOGROUP too) as XAUTOCLAIM raises it."""
        if time.monotonic() < self._due:
            return None
        self.looks += 1
        for stream in streams:
            _, claimed, _ = await self.db.xautoclaim(
                stream, protocol.GROUP, self.consumer, int(self.lease * 1000), "0-0", 1
            )
            if claimed:
                # Another may be left (several workers died): look again after this batch.
                log.warning("took over %s %s from a worker that stopped", stream, claimed[0][0])
                return stream, *claimed[0]
        self._due = time.monotonic() + self.lease / LOOKS_PER_LEASE
        return None

"""The scheduler's slots on the fleet: one per idle GPU worker, so batches leave the bot's
fair queue exactly as fast as the fleet frees up (bot/fleet/adapter.py's `free_slot`).

A slot is free when a worker's heartbeat says it is idle and no batch of ours waiting in
Redis could go to it (routing.py `free_workers`). The heartbeats are read once per look, in
one round trip (heartbeats.py): a look is on the path between two batches, right after the
outcome that freed the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from bot.fleet.outcomes import Sent
from bot.fleet.routing import free_workers, read_peers

# How often the bot looks for a freed or newly started worker (and, in the adapter, for
# cancels to pass on).
POLL_SECONDS = 0.5


class Slots:
    def __init__(self, db: Callable[[], Any], sent: dict[str, Sent]) -> None:
        self._db = db  # the adapter's client; EngineStopped once it stops
        self._sent = sent  # the adapter's requests out on the streams
        # Slots the scheduler holds whose batch is not sent yet: each keeps an idle worker
        # for itself (the requests out on the streams are counted from self._sent).
        self._reserved = 0
        self._sent_in_slot = 0
        self._freed = asyncio.Event()  # a batch of ours ended: its worker is free again
        self.looks = 0  # reads of the heartbeats for a free worker (the tests wait on it)

    async def take(self) -> Callable[[], None]:
        """Wait for a free slot and hold it; the release to call when its batch has ended
        (or none was sent)."""
        while True:
            # Cleared before the look, not after: a batch that ends while it is under way
            # wakes the wait below at once instead of leaving it to POLL_SECONDS.
            self._freed.clear()
            if await self._free_workers() > 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._freed.wait()
        self._reserved += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            if self._sent_in_slot:  # its batch went out; its outcome freed the worker
                self._sent_in_slot -= 1
            else:
                self._reserved -= 1
                self._freed.set()

        return release

    def sent(self) -> None:
        """A batch went out: the request on its stream holds the worker from now on."""
        if self._reserved:
            self._reserved -= 1
            self._sent_in_slot += 1

    def freed(self) -> None:
        """A worker is idle now (an outcome heard, a worker started) or a batch of ours
        ended: look again."""
        self._freed.set()

    async def _free_workers(self) -> int:
        self.looks += 1
        try:
            peers = await read_peers(self._db())
        except RedisError:
            return 0  # Redis is down: nothing is released until it answers again
        running = {peer.busy for peer in peers}
        # A batch whose outcome is in is no longer waiting, though it leaves self._sent
        # only once its sender has it back.
        waiting = [
            sent.model
            for batch, sent in self._sent.items()
            if batch not in running and not sent.outcome.done()
        ]
        return free_workers(peers, waiting, self._reserved)

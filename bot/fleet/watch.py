"""What the bot knows of its fleet between batches: the live workers' heartbeats, read
every WATCH_SECONDS, and whether Redis answers. The waits in /queue come from it (the
fleet's pace), and so does the word to members that the queue is paused while Redis is
down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from bot.fleet.routing import FRESH_SECONDS, Peer, read_peers
from engine.api.errors import EngineStopped
from engine.api.port import Pace

log = logging.getLogger(__name__)

WATCH_SECONDS = 1.0
# Failed reads in a row that pause the queue: one alone is most often a pooled connection
# that a restarted Redis closed, which the next read opens afresh.
PAUSE_AFTER = 2


def lanes(peers: Sequence[Peer]) -> float:
    """Batches the live workers run at once, each counted at the fleet's typical speed
    (seconds per batch over all the batches they ran): a GPU twice as fast counts twice,
    one not measured yet counts once."""
    live = [peer for peer in peers if peer.age <= FRESH_SECONDS]
    measured = [peer for peer in live if peer.seconds_per_batch]
    if not measured:
        return float(len(live))
    batches = sum(peer.served for peer in measured)
    typical = sum(peer.served * (peer.seconds_per_batch or 0.0) for peer in measured) / batches
    return sum(typical / peer.seconds_per_batch if peer.seconds_per_batch else 1.0 for peer in live)


class FleetWatch:
    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self.paused = False
        self._failures = 0  # reads in a row that Redis did not answer
        self._change = asyncio.Event()  # replaced at each change: whoever waits wakes once

    def pace(self) -> Pace:
        return Pace(lanes(self.peers), self.paused)

    async def pace_changed(self, seen: Pace) -> Pace:
        while self.paused == seen.paused:
            await self._change.wait()
        return self.pace()

    def answered(self) -> None:
        self._failures = 0
        self._set_paused(False)

    def unreachable(self, error: BaseException) -> None:
        self._failures += 1
        if self._failures < PAUSE_AFTER:
            return
        if not self.paused:
            log.warning("Redis does not answer (%s): the queue is paused until it does", error)
        self._set_paused(True)

    def _set_paused(self, paused: bool) -> None:
        if paused == self.paused:
            return
        if not paused:
            log.info("Redis answers again: the queue goes on")
        self.paused = paused
        changed, self._change = self._change, asyncio.Event()
        changed.set()

    async def run(self, db: Callable[[], Any], also: Callable[[], Awaitable[None]]) -> None:
        """Until the engine stops: the heartbeats, then `also` (the bot's own checks on
        Redis), every WATCH_SECONDS."""
        while True:
            try:
                self.peers = await read_peers(db())
                await also()
            except EngineStopped:
                return
            except (ConnectionError, OSError, RedisError) as error:
                self.unreachable(error)
            else:
                self.answered()
            await asyncio.sleep(WATCH_SECONDS)

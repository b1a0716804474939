"""Which worker takes a batch, from the workers' heartbeats.

Every worker that can load a model reads that model's stream in one consumer group, so
the first to ask gets the batch. To send a batch to a worker that has its model loaded
when one is free, and to the faster of two otherwise alike, a worker waits (a blocking
read) only on the streams no peer would serve better. A stream a better peer serves it
only looks at, once a round, and only while that peer is busy: when the peer is idle it
is blocked on the stream and takes the batch at once. Workers publish their state as it
changes, not only in their heartbeat, so "busy" is current. The deferral is bounded: a
batch still unread after DEFER_SECONDS (the peer died, its heartbeat not yet expired) is
taken by whoever is free.

The bot counts its free slots the same way: an idle worker is a free slot unless a batch
already waiting in Redis is one it can serve, so a batch for a model only a busy worker
can load does not hold back an idle worker of another model.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from bot.fleet import heartbeats, protocol

# A batch waits at most this long (after the round that saw it) for the better worker.
DEFER_SECONDS = 2.0
# A peer is faster when its seconds per batch are under this share of ours: measured
# speeds wobble, and two equal GPUs should share the work, not defer to each other.
FASTER = 0.8
# A heartbeat older than this (by its key's time to live, Redis's clock, not a machine's)
# is from a worker that may have died: it is never deferred to.
FRESH_SECONDS = 2 * protocol.HEARTBEAT_SECONDS


@dataclass(frozen=True, slots=True)
class Peer:
    """One worker as its heartbeat shows it."""

    name: str
    models: frozenset[str]
    loaded: str  # the model on its card now; "" before its first
    busy: str  # the batch it runs; "" when idle
    served: int
    seconds_per_batch: float | None  # None before its first batch
    age: float = 0.0  # seconds since its last heartbeat

    @classmethod
    def from_heartbeat(cls, values: dict[str, str], age: float = 0.0) -> Peer:
        """KeyError or ValueError for a heartbeat half written."""
        served = int(values["served"])
        return cls(
            values["name"],
            frozenset(model for model in values["models"].split(",") if model),
            values.get("loaded", ""),
            values["busy"],
            served,
            float(values["seconds_per_batch"]) if served else None,
            age,
        )

    def serves(self, model: str | None) -> bool:
        return model is None or model in self.models


async def read_peers(db: Any) -> list[Peer]:
    """Every worker with a heartbeat in Redis, in one round trip (RedisError when Redis
    does not answer)."""
    peers = []
    for values, age in await heartbeats.read_all(db):
        try:
            peers.append(Peer.from_heartbeat(values, age))
        except (KeyError, ValueError):  # a hash there that is not a heartbeat of ours
            continue
    return peers


def better_for(peer: Peer, me: Peer, model: str, *, idle: bool = True) -> bool:
    """Whether `peer` should take `model`'s next batch rather than `me`: it is alive and
    serves the model (and is idle, unless `idle` is False), and has it loaded where `me`
    has not, or is clearly faster."""
    if peer.name == me.name or (idle and peer.busy) or not peer.serves(model):
        return False
    if peer.age > FRESH_SECONDS:
        return False
    if (peer.loaded == model) != (me.loaded == model):
        return peer.loaded == model
    if peer.seconds_per_batch is None or me.seconds_per_batch is None:
        return False  # not measured yet: no reason to prefer either
    return peer.seconds_per_batch < FASTER * me.seconds_per_batch


def free_workers(peers: Iterable[Peer], waiting: Sequence[str | None], reserved: int) -> int:
    """Idle workers left once each batch waiting in Redis (by its model; None: any worker)
    has one that can serve it, less the slots the scheduler holds for batches not sent."""
    left = [peer for peer in peers if not peer.busy]
    # The batches fewest idle workers can serve first, so they get one if any can.
    for model in sorted(waiting, key=lambda m: sum(peer.serves(m) for peer in left)):
        match = next((peer for peer in left if peer.serves(model)), None)
        if match is not None:
            left.remove(match)
    return len(left) - reserved


@dataclass(frozen=True, slots=True)
class Round:
    """What a worker reads this round: the streams it waits on (no peer would serve their
    batches better), and those it only looks at once, each with the heartbeats of the
    better peers it may take a batch from only while they are all busy (none: a batch
    there waited too long for them)."""

    blocking: list[str]
    polled: dict[str, list[str]]
    # A better idle peer is there for a stream unread this round: the round is short, so
    # a batch there is taken soon should that peer take another first.
    deferring: bool


# A batch of KEYS[1], unless a peer whose heartbeat is among KEYS[2..] is idle: checked
# and read in one step in Redis, so a peer that has just gone idle (it says so before its
# outcome is sent, so before the bot's next batch) always has the next batch to itself.
# A heartbeat that has expired is a peer that is gone.
_READ_IF_RIVALS_BUSY = """
for i = 2, #KEYS do
  if redis.call('HGET', KEYS[i], 'busy') == '' then return false end
end
return redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
"""


async def read_unless_rivals_idle(
    db: Any, stream: str, rivals: Sequence[str], consumer: str
) -> list[Any]:
    """XREADGROUP's answer for one entry of `stream`, or [] (a rival idle, or nothing there)."""
    keys = [stream, *(protocol.WORKERS + name for name in rivals)]
    answer = await db.eval(_READ_IF_RIVALS_BUSY, len(keys), *keys, protocol.GROUP, consumer)
    # The script's answer is raw: each entry's fields a flat list, as redis-py does not parse.
    return [
        (
            name,
            [
                (entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))
                for entry_id, flat in entries
            ],
        )
        for name, entries in answer or []
    ]


class Deferral:
    """A worker's choice of the streams to read each round."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self._since: dict[str, float] = {}  # a deferred stream: when a batch was seen there

    async def round(self, me: Peer, models: Iterable[str]) -> Round:
        peers = await read_peers(self.db)
        blocking: list[str] = []
        polled: dict[str, list[str]] = {}
        deferring = False
        for model in sorted(models):
            stream = protocol.model_stream(model)
            rivals = [peer for peer in peers if better_for(peer, me, model, idle=False)]
            if not rivals or all(peer.busy for peer in rivals):
                self._since.pop(stream, None)  # not deferring: a later wait counts anew
            if not rivals:
                blocking.append(stream)  # the best there is for it: wait on it
            elif all(peer.busy for peer in rivals):
                polled[stream] = [peer.name for peer in rivals]
            elif await self._waited_too_long(stream):
                polled[stream] = []
            else:
                deferring = True
        # The batches any worker serves (safety checks) are never deferred.
        return Round([*blocking, protocol.BATCHES], polled, deferring or bool(polled))

    async def _waited_too_long(self, stream: str) -> bool:
        if not await self._unread(stream):
            self._since.pop(stream, None)
            return False
        since = self._since.setdefault(stream, time.monotonic())
        return time.monotonic() - since >= DEFER_SECONDS

    async def _unread(self, stream: str) -> bool:
        """Whether a batch there is not delivered to any worker yet."""
        try:
            groups = await self.db.xinfo_groups(stream)
        except ResponseError:  # no such stream (Redis lost its data): nothing waits there
            return False
        for group in groups:
            name = group["name"]
            if (name.decode() if isinstance(name, bytes) else name) == protocol.GROUP:
                # None: Redis cannot tell (entries deleted); assume one waits.
                return group.get("lag") is None or int(group["lag"]) > 0
        return False

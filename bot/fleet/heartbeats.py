"""The workers' heartbeats in Redis, each written and all read in one round trip.

A heartbeat is a hash that expires (protocol.WORKERS + name). Its name goes into one set
(protocol.WORKER_NAMES) in the same transaction, so reading every heartbeat is one script
(the set, then each hash and its time to live) rather than a SCAN of the whole keyspace,
which grows with every cancel mark and shared file, and a pipeline after it. It is on the
path between two batches twice: the bot reads the heartbeats before it releases a batch
(its free slots), and each worker before it reads its streams (routing.py). A name whose
hash has expired (a worker that died) leaves the set at the next read.
"""

from __future__ import annotations

from typing import Any

from bot.fleet import protocol

# Each live heartbeat's fields and time to live (ms), flat; the names of expired ones out.
_READ_ALL = """
local found = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. name
  local ttl = redis.call('PTTL', key)
  if ttl == -2 then
    redis.call('SREM', KEYS[1], name)
  else
    found[#found + 1] = redis.call('HGETALL', key)
    found[#found + 1] = ttl
  end
end
return found
"""


def write(pipe: Any, name: str, state: dict[str, str]) -> None:
    """A worker's heartbeat, queued on `pipe` (a transaction, so the hash is never there
    without its time to live, nor without its name in the set)."""
    key = protocol.WORKERS + name
    pipe.hset(key, mapping=state)
    pipe.expire(key, protocol.WORKER_TTL_SECONDS)
    pipe.sadd(protocol.WORKER_NAMES, name)


async def forget(db: Any, name: str) -> None:
    """A worker that stops cleanly is gone at once, not when its heartbeat expires."""
    async with db.pipeline(transaction=True) as pipe:
        pipe.delete(protocol.WORKERS + name)
        pipe.srem(protocol.WORKER_NAMES, name)
        await pipe.execute()


async def read_all(db: Any) -> list[tuple[dict[str, str], float]]:
    """Each live heartbeat's fields and age (seconds since it was written, by Redis's
    clock): RedisError when Redis does not answer."""
    flat = await db.eval(_READ_ALL, 1, protocol.WORKER_NAMES, protocol.WORKERS)
    found = []
    for fields, ttl in zip(flat[::2], flat[1::2], strict=True):
        values = {
            key.decode(): value.decode()
            for key, value in zip(fields[::2], fields[1::2], strict=True)
        }
        found.append((values, protocol.WORKER_TTL_SECONDS - max(0, int(ttl)) / 1000))
    return found

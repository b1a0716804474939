"""The path between two batches on the fleet (issue 12's dispatch overhead), against a real
redis-server: what it no longer does there (a SCAN of the keyspace, an XAUTOCLAIM per stream
before every read), and what it must still get right (the heartbeats it reads instead, the
order of a worker's busy and idle heartbeats)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as redis

from bot.fleet import heartbeats, protocol, slots
from bot.fleet.routing import read_peers
from bot.fleet.worker import FleetWorker
from bot.jobs.engines import local_engine
from tests.conftest import DEADLINE
from tests.fleet_helpers import Recorder, until
from tests.test_fleet import fleet_bot, fleet_settings, running_fleet, submit  # noqa: F401


async def test_between_batches_nothing_scans_redis_nor_looks_for_dead_workers(
    fleet_settings,  # noqa: F811
    redis_server,
):
    db: Any = redis.Redis.from_url(redis_server.url)
    async with running_fleet(fleet_settings, redis_server.url) as (bot, fleet):
        # A lease of ten minutes: a worker looks for a dead worker's batch when it starts,
        # then each quarter lease, never before each read.
        fleet.lease = 600.0
        worker = await fleet.start("one")
        await until(lambda: worker.rounds > 0)  # its first look is behind it
        await db.config_resetstat()
        observers = [Recorder() for _ in range(4)]
        for index, observer in enumerate(observers):
            await submit(bot, 10 + index % 2, observer, seed=index, steps=2)
        for observer in observers:
            await asyncio.wait_for(observer.ended.wait(), DEADLINE)
        assert all(observer.outcomes for observer in observers)
        stats = await db.info("commandstats")
        assert worker.served == 4
        assert worker.takeover.looks == 1
        assert "cmdstat_xautoclaim" not in stats, "no look for dead workers between batches"
        assert "cmdstat_scan" not in stats, "the heartbeats are read from their set"
        assert "cmdstat_eval" in stats, "the heartbeats were read"
    await db.aclose()


async def test_a_dead_workers_name_leaves_the_heartbeats_once_its_hash_expires(
    fleet_bot,  # noqa: F811
    redis_server,
):
    bot, fleet = fleet_bot
    db: Any = redis.Redis.from_url(redis_server.url)
    alive = await fleet.start("alive")
    # The heartbeat a worker killed mid-batch leaves behind (no goodbye): left to expire.
    async with db.pipeline(transaction=True) as pipe:
        heartbeats.write(pipe, "doomed", {**alive.state(), "name": "doomed", "busy": "b1"})
        await pipe.execute()
    assert {peer.name for peer in await read_peers(db)} == {"alive", "doomed"}
    await db.pexpire(protocol.WORKERS + "doomed", 1)
    await until(lambda: _gone(db, protocol.WORKERS + "doomed"))
    assert [peer.name for peer in await read_peers(db)] == ["alive"]
    assert await db.smembers(protocol.WORKER_NAMES) == {b"alive"}
    assert [worker.name for worker in await bot.engine.workers()] == ["alive"]
    await db.aclose()


async def _gone(db: Any, key: str) -> bool:
    return not await db.exists(key)


async def test_a_hash_in_the_heartbeats_that_is_not_one_is_passed_over(fleet_bot, redis_server):  # noqa: F811
    bot, fleet = fleet_bot
    db: Any = redis.Redis.from_url(redis_server.url)
    await fleet.start("one")
    async with db.pipeline(transaction=True) as pipe:
        heartbeats.write(pipe, "stranger", {"name": "stranger"})  # no models, no state
        await pipe.execute()
    assert [peer.name for peer in await read_peers(db)] == ["one"]
    observer = Recorder()
    await submit(bot, 10, observer, steps=2)
    await asyncio.wait_for(observer.ended.wait(), DEADLINE)
    assert observer.outcomes, "served by the one worker there is"
    await db.aclose()


class SlowToSayBusy(FleetWorker):
    """A worker whose busy heartbeat Redis answers only once the batch has run (a slow
    link): its idle heartbeat must still be the last one written."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.ran = asyncio.Event()
        self.said_busy = asyncio.Event()

    async def _run(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return await super()._run(request)
        finally:
            self.ran.set()

    async def publish(self) -> None:
        if not self.busy:
            await super().publish()
            return
        state = self.state()  # what it says now, written late
        await self.ran.wait()
        async with self.db.pipeline(transaction=True) as pipe:
            heartbeats.write(pipe, self.name, state)
            await pipe.execute()
        self.said_busy.set()


async def test_a_busy_heartbeat_slow_to_land_never_lands_after_the_idle_one(
    fleet_bot,  # noqa: F811
    redis_server,
):
    bot, fleet = fleet_bot
    db: Any = redis.Redis.from_url(redis_server.url)
    engine = local_engine(fleet.settings)
    engine.start()
    await engine.preload("tiny")
    worker = SlowToSayBusy(db, engine, "slow", fleet.settings.data_dir / "slow", fleet.lease)
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    try:
        first = Recorder()
        await submit(bot, 10, first, steps=2)
        await asyncio.wait_for(first.ended.wait(), DEADLINE)
        await asyncio.wait_for(worker.said_busy.wait(), DEADLINE)
        assert first.outcomes
        assert (await db.hget(protocol.WORKERS + "slow", "busy")) == b"", "idle after it"
        second = Recorder()
        await submit(bot, 11, second, steps=2)
        await asyncio.wait_for(second.ended.wait(), DEADLINE)
        assert second.outcomes
        assert worker.served == 2
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await engine.stop()
        await db.aclose()


class LookOvertaken:
    """The bot's client, its first look at the heartbeats overtaken by a worker going idle
    (its heartbeat, then its outcome heard) before the answer is back."""

    def __init__(self, db: Any, overtaken: Any) -> None:
        self.db = db
        self.overtaken = overtaken
        self.looks = 0

    async def eval(self, *args: Any) -> Any:
        answer = await self.db.eval(*args)
        self.looks += 1
        if self.looks == 1:
            await self.overtaken()
        return answer


async def test_a_worker_freed_while_the_bot_looks_is_taken_at_once(redis_server, monkeypatch):
    db: Any = redis.Redis.from_url(redis_server.url)
    # No second look unless woken: a wake-up lost would hang here until DEADLINE.
    monkeypatch.setattr(slots, "POLL_SECONDS", 10 * DEADLINE)
    fleet_slots: slots.Slots

    async def worker_goes_idle() -> None:
        state = {"name": "one", "models": "tiny", "busy": "", "served": "0"}
        async with db.pipeline(transaction=True) as pipe:
            heartbeats.write(pipe, "one", {**state, "seconds_per_batch": "0", "seen": "0"})
            await pipe.execute()
        fleet_slots.freed()

    client = LookOvertaken(db, worker_goes_idle)
    fleet_slots = slots.Slots(lambda: client, {})
    release = await asyncio.wait_for(fleet_slots.take(), DEADLINE)
    assert client.looks == 2, "the first look saw nobody; the wake-up brought the second"
    release()
    await db.aclose()


async def test_a_worker_that_starts_is_given_the_waiting_job_without_waiting_for_a_poll(
    fleet_settings,  # noqa: F811
    redis_server,
    monkeypatch,
):
    # The bot's poll for workers that started never comes in this test: the worker's
    # ready event is what wakes it.
    monkeypatch.setattr(slots, "POLL_SECONDS", 3600.0)
    async with running_fleet(fleet_settings, redis_server.url) as (bot, fleet):
        observer = Recorder()
        await submit(bot, 10, observer, steps=2)
        # The dispatcher has looked, found no worker, and waits (for an hour, unwoken).
        await until(lambda: bot.engine.slots.looks > 0)
        await fleet.start("late")
        await asyncio.wait_for(observer.ended.wait(), DEADLINE)
        assert observer.outcomes

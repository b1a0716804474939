"""The bot restarted while a GPU worker holds one of its jobs: nothing is lost, nothing
ends twice. Against a real redis-server, with workers in this process."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from bot.client.runner import build_bot
from bot.jobs import recovery
from bot.jobs.engines import local_engine
from data.jobs import JobStatus
from tests.fleet_helpers import Recorder, until
from tests.test_fleet import Fleet, submit


async def _die(bot: Any, dispatcher: asyncio.Task[None]) -> None:
    """As a killed bot leaves things: its tasks end with nothing written."""
    for task in list(bot.scheduler._batches):
        task.cancel()
    dispatcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await dispatcher
    await asyncio.gather(*bot.scheduler._batches, return_exceptions=True)


async def test_the_bot_restarted_while_a_worker_holds_a_job_loses_nothing(
    make_settings, redis_server
):
    settings = make_settings(queue_url=redis_server.url)
    fleet = Fleet(settings, redis_server.url, lease=1.0)
    held = threading.Event()
    slow = local_engine(settings)
    slow.start()
    await slow.preload("tiny")
    fleet._held = slow
    hold = asyncio.ensure_future(slow.call(held.wait))  # its batch waits behind this
    bot = build_bot(settings)
    async with bot.store, bot.engine:
        dispatcher = asyncio.create_task(bot.scheduler.run())
        await fleet.start("slow", slow)
        first = await submit(bot, 10, Recorder(), steps=2)
        await until(lambda: fleet.workers["slow"].busy != "")
        waiting = [await submit(bot, 11, Recorder(), steps=2), await submit(bot, 10, Recorder())]
        await _die(bot, dispatcher)
        assert (await bot.scheduler.jobs.get(first.job.id)).status is JobStatus.RUNNING
    ids = [first.job.id, *(ticket.job.id for ticket in waiting)]

    again = build_bot(settings)
    async with again.store, again.engine:
        restored, ended = await recovery.recover(again.scheduler)
        assert (sorted(job.id for job in restored), ended) == (sorted(ids), [])
        dispatcher = asyncio.create_task(again.scheduler.run())
        await fleet.start("fast")

        async def all_done() -> bool:
            jobs = [await again.scheduler.jobs.get(job_id) for job_id in ids]
            return all(job.status is JobStatus.SUCCEEDED for job in jobs)

        await until(all_done)
        # The slow worker now runs the first bot's batch; its outcome is for a batch the
        # new bot never sent, and changes nothing.
        held.set()
        await hold
        await until(lambda: fleet.workers["slow"].served == 1)
        await again.scheduler.stop(dispatcher, grace=5.0)
        await again.scheduler.drain()
        jobs = {job_id: await again.scheduler.jobs.get(job_id) for job_id in ids}
        assert jobs[first.job.id].attempts == 2, "run again once, by the new bot"
        assert all(job.status is JobStatus.SUCCEEDED for job in jobs.values())
        assert [len(await again.scheduler.jobs.images(job_id)) for job_id in ids] == [1, 1, 1]
        assert await again.dreams.credits.check() == []
        costs = {job_id: job.cost for job_id, job in jobs.items()}
        assert await again.dreams.credits.balance(10) == 50 - costs[ids[0]] - costs[ids[2]]
        assert await again.dreams.credits.balance(11) == 50 - costs[ids[1]]
    await fleet.stop_all()

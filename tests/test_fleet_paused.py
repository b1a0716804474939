"""While the GPU workers' Redis does not answer, members are told the queue is paused, and
their jobs wait and run once it answers again (issue 12), against a real redis-server."""

from __future__ import annotations

import asyncio

from bot.jobs.contracts import QueueEntry
from bot.jobs.waits import PAUSED
from cogs.queue import entry_line
from data.jobs import JobStatus
from tests.conftest import DEADLINE
from tests.fleet_helpers import Recorder, until
from tests.test_fleet import fleet_bot, fleet_settings, submit  # noqa: F401 (fixtures)


async def test_jobs_queued_while_redis_is_down_are_told_so_and_run_once_it_is_back(
    fleet_bot,  # noqa: F811
    redis_server,
):
    bot, fleet = fleet_bot
    before = await submit(bot, 10, Recorder(), steps=2)
    assert PAUSED not in before.note, "Redis answers: nothing paused"
    redis_server.kill()
    await until(lambda: bot.engine.pace().paused)
    observer = Recorder()
    ticket = await submit(bot, 11, observer, steps=2, seed=5)
    assert ticket.note.endswith(PAUSED), "the member hears it with their queue position"
    [entry] = [e for e in bot.scheduler.queue_entries() if e.job_id == ticket.job.id]
    assert isinstance(entry, QueueEntry)
    assert entry.paused
    assert entry.wait_seconds is None, "no wait is promised while nothing can run"
    assert f"`job {ticket.job.id}` #" in entry_line(entry, mine=True)
    assert ", paused: " in entry_line(entry, mine=True)
    redis_server.start()
    await until(lambda: not bot.engine.pace().paused)
    await fleet.start("late")
    await asyncio.wait_for(observer.ended.wait(), DEADLINE)
    assert observer.outcomes
    assert not observer.failures
    job = await bot.scheduler.jobs.get(ticket.job.id)
    assert job.status is JobStatus.SUCCEEDED
    after = await submit(bot, 12, Recorder(), steps=2, seed=6)
    assert PAUSED not in after.note

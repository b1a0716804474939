"""While the GPU workers' Redis does not answer, members are told the queue is paused, and
their jobs wait and run once it answers again (issue 12), against a real redis-server."""

from __future__ import annotations

import asyncio

from bot.jobs.contracts import QueueEntry
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
    waiting = Recorder()
    before = await submit(bot, 10, waiting, steps=2)
    assert not before.paused, "Redis answers: nothing paused"
    redis_server.kill()
    await until(lambda: bot.engine.pace().paused)
    # Already waiting (no worker yet) when the pause began: told now, not only at its end.
    await until(lambda: waiting.waits)
    [told] = waiting.waits
    assert (told.job_id, told.position, told.paused) == (before.job.id, 1, True)
    observer = Recorder()
    ticket = await submit(bot, 11, observer, steps=2, seed=5)
    assert ticket.paused, "the member hears it with their queue position"
    [entry] = [e for e in bot.scheduler.queue_entries() if e.job_id == ticket.job.id]
    assert isinstance(entry, QueueEntry)
    assert entry.paused
    assert entry.wait_seconds is None, "no wait is promised while nothing can run"
    assert f"`job {ticket.job.id}` #" in entry_line(entry, mine=True)
    assert ", paused: " in entry_line(entry, mine=True)
    redis_server.start()
    await until(lambda: not bot.engine.pace().paused)
    # Both told the pause is over, each with its position as it is now.
    await until(lambda: len(waiting.waits) == 2 and observer.waits)
    assert [(e.position, e.paused) for e in (waiting.waits[-1], *observer.waits)] == [
        (1, False),
        (2, False),
    ]
    await fleet.start("late")
    for recorder in (waiting, observer):
        await asyncio.wait_for(recorder.ended.wait(), DEADLINE)
        assert recorder.outcomes
        assert not recorder.failures
    job = await bot.scheduler.jobs.get(ticket.job.id)
    assert job.status is JobStatus.SUCCEEDED
    assert (len(waiting.waits), len(observer.waits)) == (2, 1), "told once per flip"
    after = await submit(bot, 12, Recorder(), steps=2, seed=6)
    assert not after.paused

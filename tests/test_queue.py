"""The fair queue on its own: round-robin between members, batches of compatible jobs."""

from __future__ import annotations

import asyncio

from bot.jobs.kinds import JobKind
from bot.jobs.queue import JobQueue, QueuedJob
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams


def job(job_id: int, user: int, steps: int = 20) -> QueuedJob:
    params = GenerationParams("p", "", 1, steps, 7.0, 64, 64, "Euler a", 1, "tiny")
    return QueuedJob(job_id, user, EngineJob(job_id, params), 0.0, JobKind.GENERATE)


async def drain(queue: JobQueue) -> list[int]:
    served = []
    while len(queue):
        served += [j.job_id for j in await queue.take_batch()]
    return served


async def test_members_are_served_round_robin():
    queue = JobQueue()
    for job_id in range(1, 6):  # alice floods the queue first
        queue.put(job(job_id, user=1))
    queue.put(job(10, user=2))
    queue.put(job(20, user=3))
    queue.put(job(11, user=2))
    assert [j.job_id for j in queue.in_order()] == [1, 10, 20, 2, 11, 3, 4, 5]
    assert queue.position(20) == 3
    assert await drain(queue) == [1, 10, 20, 2, 11, 3, 4, 5]


async def test_a_member_who_was_just_served_goes_to_the_back():
    queue = JobQueue()
    queue.put(job(1, user=1))
    queue.put(job(2, user=1))
    [first] = await queue.take_batch()
    queue.put(job(3, user=2))  # bob arrives after alice's first job was taken
    assert [first.job_id, *[j.job_id for j in queue.in_order()]] == [1, 2, 3]
    assert await drain(queue) == [2, 3]


async def test_position_counts_the_running_batch_and_remove_works():
    queue = JobQueue()
    queue.put(job(1, user=1))
    queue.put(job(2, user=2))
    queue.running = await queue.take_batch()
    assert queue.position(2) == 2
    assert queue.remove(2).job_id == 2
    assert queue.position(2) == 0
    assert len(queue) == 0
    assert queue.remove(99) is None


async def test_batches_take_compatible_jobs_of_other_members():
    queue = JobQueue(max_batch=3)
    queue.put(job(1, user=1))
    queue.put(job(2, user=1))
    queue.put(job(3, user=2, steps=30))  # not compatible
    queue.put(job(4, user=3))
    queue.put(job(5, user=4))
    batch = await queue.take_batch()
    assert [j.job_id for j in batch] == [1, 4, 5]  # one per member, same key, up to 3
    assert [j.job_id for j in queue.in_order()] == [3, 2]


async def test_take_batch_waits_for_work():
    queue = JobQueue()
    waiter = asyncio.create_task(queue.take_batch())
    await asyncio.sleep(0)
    assert not waiter.done()
    queue.put(job(7, user=1))
    assert [j.job_id for j in await waiter] == [7]

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


def counted(job_id: int, user: int, count: int, size: int = 512) -> QueuedJob:
    params = GenerationParams("p", "", 1, 20, 7.0, size, size, "Euler a", count, "sd15")
    return QueuedJob(job_id, user, EngineJob(job_id, params), 0.0, JobKind.GENERATE)


class CardEngine:
    """The part of the engine port the budget asks: images per batch on its card."""

    def __init__(self, images: int | None) -> None:
        self.images = images
        self.asked: list[tuple[int, int]] = []

    def batch_images(self, params: GenerationParams) -> int | None:
        self.asked.append((params.width, params.height))
        return self.images


async def test_auto_batches_as_many_images_as_the_card_holds():
    from bot.generation.batching import ImageBudget

    engine = CardEngine(6)
    queue = JobQueue(max_batch=16, fits=ImageBudget(engine))  # type: ignore[arg-type]
    queue.put(counted(1, user=1, count=4))
    queue.put(counted(2, user=2, count=4))  # 8 images: over the card's 6, waits its turn
    queue.put(counted(3, user=3, count=2))
    queue.put(counted(4, user=4, count=1))
    assert [j.job_id for j in await queue.take_batch()] == [1, 3]
    assert [j.job_id for j in await queue.take_batch()] == [2, 4]
    assert engine.asked[0] == (512, 512)


async def test_without_a_card_auto_runs_each_job_alone():
    from bot.generation.batching import ImageBudget

    queue = JobQueue(max_batch=16, fits=ImageBudget(CardEngine(None)))  # type: ignore[arg-type]
    queue.put(counted(1, user=1, count=1))
    queue.put(counted(2, user=2, count=1))
    assert [j.job_id for j in await queue.take_batch()] == [1]
    assert [j.job_id for j in await queue.take_batch()] == [2]


def test_batch_images_from_the_card_the_family_and_the_size():
    from engine.api.memory import GIB, batch_images

    card = int(7.8 * GIB)  # an "8 GB" card
    assert batch_images("sd1", "high", card, 512, 512) == 6
    assert batch_images("sd1", "high", card, 768, 768) == 3  # 2.25x the pixels per image
    assert batch_images("sdxl", "medium", card, 1024, 1024) == 1
    assert batch_images("sdxl", "high", int(23.6 * GIB), 1024, 1024) == 4  # a 24 GB card
    assert batch_images("sd1", "high", 141 * GIB, 512, 512) == 16  # capped
    assert batch_images("sd1", "low", 141 * GIB, 512, 512) == 1  # layer by layer
    assert batch_images("sd1", "high", None, 512, 512) == 1  # no CUDA card

"""/train on GPU workers (bot/fleet/training.py, checkpoints.py), against a real
redis-server, with workers in this process: the checkpoints a worker writes reach Redis and
the bot's disk as they are written, and a training resumes from them wherever it runs next."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from typing import Any

import redis.asyncio as redis
import torch

from bot.client.runner import build_bot
from bot.fleet import checkpoints
from bot.fleet.checkpoints import Relay
from bot.jobs import recovery
from data.jobs import JobStatus
from engine.api.training_params import CHECKPOINT_FILE
from engine.training.loop import TrainingLoop
from tests.conftest import DEADLINE
from tests.fleet_helpers import TrainingRecorder, submit_training, until
from tests.test_fleet import Fleet


def _step(path: Any) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def _busy_from_step_five_until_paused(monkeypatch: Any) -> None:
    """The first run's fifth step takes until the pause reaches the worker (a GPU busy for
    as long as it takes), so it pauses at step 5 with step 4's checkpoint the latest."""
    run = TrainingLoop.run
    runs = 0

    def paced(loop: TrainingLoop, report: Any, cancel: threading.Event) -> float:
        nonlocal runs
        runs += 1
        if runs == 1:
            step = loop.train_step

            def slow(index: int) -> float:
                if index == 4:
                    cancel.wait()
                return step(index)

            loop.train_step = slow  # type: ignore[method-assign]
        return run(loop, report, cancel)

    monkeypatch.setattr(TrainingLoop, "run", paced)


async def test_a_training_paused_by_a_shutdown_resumes_from_the_bots_copy_after_redis_lost_it(
    make_settings, redis_server, caplog, monkeypatch
):
    _busy_from_step_five_until_paused(monkeypatch)
    settings = make_settings(queue_url=redis_server.url, train_checkpoint_every=2)
    bot = build_bot(settings)
    fleet = Fleet(settings, redis_server.url, lease=1.0)
    async with bot.store, bot.engine:
        dispatcher = asyncio.create_task(bot.scheduler.run())
        await fleet.start("one")
        observer = TrainingRecorder()
        ticket = await submit_training(bot, observer, steps=12)
        job_id = ticket.job.id
        copy = settings.data_dir / "training" / str(job_id) / CHECKPOINT_FILE
        await until(lambda: 4 in observer.steps)
        await until(lambda: copy.is_file() and _step(copy) == 4)  # on the bot's disk
        # A clean shutdown pauses the training: it stops at its next step, and the latest
        # checkpoint is kept both in Redis and on the bot's disk.
        await bot.scheduler.stop(dispatcher, grace=DEADLINE)
        await bot.scheduler.drain()
        assert (await bot.scheduler.jobs.get(job_id)).status is JobStatus.QUEUED
        db: Any = redis.Redis.from_url(redis_server.url)
        assert await db.exists(checkpoints.key(job_id))
        await db.aclose()
    await fleet.stop_all()
    paused_at = _step(copy)
    assert paused_at == 4
    assert not list((settings.data_dir / "one").glob("training/*")), "the worker kept nothing"

    # Redis restarts without its data; the bot starts again, with a worker that never saw
    # the job: it resumes from the bot's own copy, put back in Redis.
    redis_server.kill()
    redis_server.start()
    caplog.set_level(logging.INFO, logger="engine.training.trainer")
    again = build_bot(settings)
    fleet = Fleet(settings, redis_server.url, lease=1.0)
    async with again.store, again.engine:
        restored, ended = await recovery.recover(again.scheduler)
        assert ([job.id for job in restored], ended) == ([job_id], [])
        dispatcher = asyncio.create_task(again.scheduler.run())
        await fleet.start("two")

        async def finished() -> bool:
            return (await again.scheduler.jobs.get(job_id)).status is JobStatus.SUCCEEDED

        await until(finished)
        await again.scheduler.stop(dispatcher, grace=DEADLINE)
        await again.scheduler.drain()
        assert await again.dreams.credits.check() == []
        db = redis.Redis.from_url(redis_server.url)
        assert not await db.exists(checkpoints.key(job_id)), "an ended job's checkpoint goes"
        await db.aclose()
    await fleet.stop_all()
    resumed = [
        int(match.group(1))
        for record in caplog.records
        if (match := re.search(r"\(resumed at (\d+)\)", record.getMessage()))
    ]
    assert resumed == [paused_at]


async def test_a_checkpoint_rewritten_while_it_is_copied_is_copied_again_once():
    copied: list[int] = []
    release = asyncio.Event()
    version = 0

    async def copy() -> None:
        seen = version
        await release.wait()
        copied.append(seen)

    told: list[str] = []
    relay = Relay(copy, "a test file")
    relay.changed(lambda: told.append("first"))
    await asyncio.sleep(0)  # the first copy is under way
    version = 1
    relay.changed(lambda: told.append("second"))
    version = 2
    relay.changed(lambda: told.append("third"))
    release.set()
    await relay.flush()
    # The two rewrites during the first copy: one more copy, of the latest, then both told.
    assert copied == [0, 2]
    assert told == ["first", "second", "third"]
    assert relay.copies == 2


async def test_a_failed_copy_is_left_to_the_next_and_close_stops_the_copying(caplog):
    attempts = 0

    async def copy() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("Redis went away")
        await asyncio.Event().wait()  # the second copy never ends by itself

    told: list[str] = []
    relay = Relay(copy, "a test file")
    relay.changed(lambda: told.append("lost"))
    await until(lambda: attempts == 1)
    relay.changed(lambda: told.append("never"))
    await until(lambda: attempts == 2)
    await relay.close()
    assert told == []  # neither copy ended: nobody was told a copy is there
    assert "copying a test file failed" in caplog.text

"""`python -m bot worker` as owners run it: real worker processes on a real redis-server,
one killed with SIGKILL mid-batch, and one mid-/train, their work finished by another
(about 15 s each: each process imports torch and diffusers)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.client.runner import build_bot
from bot.fleet import checkpoints
from data.jobs import JobStatus
from engine.api.training_params import CHECKPOINT_FILE
from tests.conftest import DEADLINE
from tests.factories import tiny_params
from tests.fleet_helpers import (
    ROOT,
    Recorder,
    TrainingRecorder,
    bot_environment,
    submit_training,
    until,
)


def worker_process(url: str, model: Path, data: Path, name: str) -> subprocess.Popen[str]:
    """The worker's log goes to `data`/worker.log (a pipe nobody reads would fill and stop
    it)."""
    environment = bot_environment(url, {"tiny": str(model)}, data, worker_lease_seconds="2")
    data.mkdir(parents=True, exist_ok=True)
    with (data / "worker.log").open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bot", "worker", "--name", name],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )


async def test_a_worker_process_killed_mid_batch_loses_nothing(
    make_settings, redis_server, tiny_sd1, tmp_path
):
    bot = build_bot(make_settings(queue_url=redis_server.url))
    first = worker_process(redis_server.url, tiny_sd1, tmp_path / "w1", "first")
    second: subprocess.Popen[str] | None = None
    try:
        async with bot.store, bot.engine:
            dispatcher = asyncio.create_task(bot.scheduler.run())

            async def names() -> list[str]:
                return [worker.name for worker in await bot.engine.workers()]

            await until(lambda: _has(names, "first"))
            observer = Recorder()
            ticket = await bot.dreams.submit(
                bot.dreams.check(tiny_params(steps=150)),
                user_id=10,
                guild_id=None,
                channel_id=None,
                interaction_id=None,
                observer=observer,
            )

            async def stepping() -> bool:
                return bool(observer.steps)

            await until(stepping)
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait)
            second = worker_process(redis_server.url, tiny_sd1, tmp_path / "w2", "second")
            await asyncio.wait_for(observer.ended.wait(), DEADLINE)
            assert observer.failures == []
            assert observer.outcomes
            job = await bot.scheduler.jobs.get(ticket.job.id)
            assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1)
            assert await bot.dreams.credits.check() == []
            assert await bot.dreams.credits.balance(10) == 50 - ticket.job.cost
            await bot.scheduler.stop(dispatcher, grace=5.0)
            await bot.scheduler.drain()
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=DEADLINE)
    assert first.returncode == -signal.SIGKILL


async def _has(names: Callable[[], Any], name: str) -> bool:
    return name in await names()


async def test_a_training_whose_worker_is_killed_resumes_from_its_checkpoint_elsewhere(
    make_settings, redis_server, tiny_sd1, tmp_path
):
    settings = make_settings(queue_url=redis_server.url, train_checkpoint_every=10)
    bot = build_bot(settings)
    first = worker_process(redis_server.url, tiny_sd1, tmp_path / "w1", "first")
    second: subprocess.Popen[str] | None = None
    try:
        async with bot.store, bot.engine:
            dispatcher = asyncio.create_task(bot.scheduler.run())

            async def names() -> list[str]:
                return [worker.name for worker in await bot.engine.workers()]

            await until(lambda: _has(names, "first"))
            observer = TrainingRecorder()
            ticket = await submit_training(bot, observer, steps=40)
            # The first checkpoint on the bot's disk: the worker sent it back as written.
            copy = settings.data_dir / "training" / str(ticket.job.id) / CHECKPOINT_FILE
            await until(copy.is_file)
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait)
            second = worker_process(redis_server.url, tiny_sd1, tmp_path / "w2", "second")
            await asyncio.wait_for(observer.ended.wait(), DEADLINE)
            assert observer.failures == []
            [outcome] = observer.outcomes
            # The second worker (its disk empty) went on from the first's last checkpoint:
            # its first step is the one after it (the steps since that checkpoint are the
            # only ones trained twice).
            assert outcome.resumed_from >= 10
            assert outcome.resumed_from % 10 == 0
            steps = observer.steps
            back = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
            if back:  # else it was killed right after a checkpoint: no step is repeated
                assert steps[back[-1]] == outcome.resumed_from + 1
            assert steps[-1] == 40
            job = await bot.scheduler.jobs.get(ticket.job.id)
            assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1)
            assert await bot.dreams.credits.check() == []
            assert await bot.dreams.credits.balance(10) == 50 - ticket.job.cost
            assert not await bot.engine._db.exists(checkpoints.key(ticket.job.id))
            await bot.scheduler.stop(dispatcher, grace=5.0)
            await bot.scheduler.drain()
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=DEADLINE)
    assert first.returncode == -signal.SIGKILL
    assert not list((tmp_path / "w2").glob("training/*")), "the worker kept nothing"

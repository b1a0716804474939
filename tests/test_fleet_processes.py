"""`python -m bot worker` as owners run it: real worker processes on a real redis-server,
one killed with SIGKILL mid-batch and its batch finished by another (about 15 s: each
process imports torch and diffusers)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.client.runner import build_bot
from data.jobs import JobStatus
from tests.conftest import DEADLINE
from tests.factories import tiny_params
from tests.fleet_helpers import ROOT, Recorder, bot_environment, until


def worker_process(url: str, model: Path, data: Path, name: str) -> subprocess.Popen[str]:
    environment = bot_environment(url, {"tiny": str(model)}, data, worker_lease_seconds="2")
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "worker", "--name", name],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
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

"""`python -m bot worker` as owners run it: real worker processes on a real redis-server,
one killed with SIGKILL mid-batch and its batch finished by another (about 15 s: each
process imports torch and diffusers)."""

from __future__ import annotations

import asyncio
import json
import os
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

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    def __init__(self) -> None:
        self.outcomes: list[Any] = []
        self.failures: list[str] = []
        self.steps: list[int] = []
        self.ended = asyncio.Event()

    def progress(self, job_id: int, progress: Any) -> None:
        self.steps.append(progress.step)

    async def succeeded(self, outcome: Any) -> int | None:
        self.outcomes.append(outcome)
        self.ended.set()
        return None

    async def failed(self, job: Any, message: str, refunded: int) -> None:
        self.failures.append(message)
        self.ended.set()


def worker_process(url: str, model: Path, data: Path, name: str) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SDBOT_")}
    environment.update(
        {
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT),
            "SDBOT_QUEUE_URL": url,
            "SDBOT_MODELS": json.dumps({"tiny": {"source": str(model)}}),
            "SDBOT_DEFAULT_MODEL": "tiny",
            "SDBOT_DATA_DIR": str(data),
            "SDBOT_DEVICE": "cpu",
            "SDBOT_WORKER_LEASE_SECONDS": "2",
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "worker", "--name", name],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


async def until(predicate: Callable[[], Any]) -> None:
    async with asyncio.timeout(DEADLINE):
        while not await predicate():  # noqa: ASYNC110 (other processes do the work)
            await asyncio.sleep(0.1)


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

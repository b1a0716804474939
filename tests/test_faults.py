"""Faults below Discord: the engine thread dying, and SQLite locked by another connection.

Each fault is made for real: the engine thread is killed by an exception that escapes its
loop (raised in it, or injected from outside as an asynchronous exception), and the lock is
held by a second SQLite connection, as a `sqlite3` shell or a backup script would hold it.
"""

from __future__ import annotations

import asyncio
import ctypes
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.jobs.contracts import JobOutcome
from bot.settings import Settings
from data import JobRepository, JobStatus, Store
from data.store import StoreBusy
from engine.worker import EngineConfig, EngineDied, EngineWorker
from tests.factories import tiny_params

# -- the engine thread dying ------------------------------------------------------------


@pytest.fixture
async def worker() -> AsyncIterator[EngineWorker]:
    engine = EngineWorker(EngineConfig(models={}, device="cpu"))
    engine.start()
    yield engine
    await engine.stop()


def exit_the_thread() -> None:
    raise SystemExit("a library called sys.exit on the engine thread")


async def test_a_thread_killed_by_its_work_fails_that_work_and_a_new_thread_serves(worker):
    first = worker._thread
    with pytest.raises(EngineDied):
        await worker.call(exit_the_thread)
    assert await worker.call(lambda: threading.current_thread()) is not first
    assert worker.restarts == 1
    assert worker.running
    assert first is not None
    assert not first.is_alive()


async def test_work_queued_behind_the_dying_work_is_served_by_the_new_thread(worker):
    gate = threading.Event()
    dying = asyncio.ensure_future(worker.call(lambda: gate.wait() and exit_the_thread()))
    behind = asyncio.ensure_future(worker.call(lambda: "served"))
    gate.set()
    with pytest.raises(EngineDied):
        await dying
    assert await behind == "served"
    assert worker.restarts == 1


async def test_a_thread_killed_from_outside_mid_work_is_replaced(worker):
    """An asynchronous exception lands wherever the thread is, as a real death would."""
    working = threading.Event()
    never = threading.Event()

    def long_work() -> None:
        working.set()
        while not never.wait(0.005):  # back in Python often, where the exception lands
            pass

    call = asyncio.ensure_future(worker.call(long_work))
    await asyncio.to_thread(working.wait)
    thread = worker._thread
    assert thread is not None
    assert thread.ident is not None
    killed = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt)
    )
    assert killed == 1
    with pytest.raises(EngineDied):
        await call
    assert await worker.call(lambda: 7) == 7
    assert worker.restarts == 1


async def test_stop_after_a_death_refuses_what_is_left_and_returns(worker):
    with pytest.raises(EngineDied):
        await worker.call(exit_the_thread)
    await worker.stop()
    assert not worker.running


# -- SQLite locked by another connection ------------------------------------------------


class OtherConnection:
    """A second connection to the bot's database that takes the write lock and keeps it,
    as `sqlite3 bot.sqlite3` with `BEGIN IMMEDIATE;` typed into it does."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.held = False
        self._guard = threading.Lock()

    def hold(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.held = True

    def release(self) -> None:
        with self._guard:  # released from a timer, a trace callback or a log handler
            if self.held:
                self.db.execute("COMMIT")
                self.held = False

    def close(self) -> None:
        self.release()
        self.db.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / "bot.sqlite3")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def other(store: Store) -> Any:
    connection = OtherConnection(store.path)
    yield connection
    connection.close()


async def create_job(jobs: JobRepository, interaction_id: int) -> Any:
    return await jobs.create(
        kind="dream",
        user_id=10,
        guild_id=None,
        channel_id=None,
        interaction_id=interaction_id,
        params={"prompt": "a cat"},
        cost=1,
    )


async def shorten_busy_timeout(store: Store, ms: int = 10) -> None:
    """A lock "longer than the timeout" without waiting 5 s per try: the bot's own
    connection is told to give up sooner (the retries after it stay as shipped)."""
    async with store.db.execute(f"PRAGMA busy_timeout = {ms}"):
        pass


async def test_a_write_waits_for_a_lock_held_a_while_and_then_succeeds(store, other):
    jobs = JobRepository(store)
    other.hold()
    started = threading.Event()

    def on_statement(sql: str) -> None:
        # The bot's BEGIN has started while the lock is held: let go a moment later, well
        # inside the 5 s busy timeout, as a short backup or a shell query would.
        if sql.startswith("BEGIN") and other.held and not started.is_set():
            started.set()
            threading.Timer(0.2, other.release).start()

    await store.db.set_trace_callback(on_statement)
    job = await create_job(jobs, 1)
    await store.db.set_trace_callback(None)
    assert started.is_set()
    assert (await jobs.get(job.id)).status is JobStatus.QUEUED


async def test_a_lock_held_past_every_try_raises_store_busy_having_written_nothing(
    store, other, caplog
):
    jobs = JobRepository(store)
    await shorten_busy_timeout(store)
    other.hold()
    with pytest.raises(StoreBusy):
        await create_job(jobs, 1)
    retries = [r for r in caplog.records if "locked by another connection" in r.getMessage()]
    assert len(retries) == 3
    other.release()
    assert await jobs.with_status(*JobStatus) == []
    # and the next write goes through, once the other connection is done
    job = await create_job(jobs, 1)
    assert (await jobs.get(job.id)).status is JobStatus.QUEUED


async def test_other_sqlite_errors_are_not_retried(store, caplog):
    async def broken() -> None:
        async with store.transaction() as db, db.execute("SELECT * FROM no_such_table"):
            pass

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await broken()
    assert not [r for r in caplog.records if "locked" in r.getMessage()]


# -- a job whose claim meets the lock ---------------------------------------------------


class Recorder:
    """Stands where the Discord presenter does: what the member would have been told."""

    def __init__(self) -> None:
        self.succeeded_jobs: list[int] = []
        self.failed_jobs: list[tuple[int, str]] = []

    def progress(self, job_id: int, progress: Any) -> None:
        pass

    async def succeeded(self, outcome: JobOutcome) -> int | None:
        self.succeeded_jobs.append(outcome.job.id)
        return None

    async def failed(self, job: Any, message: str, refunded: int) -> None:
        self.failed_jobs.append((job.id, message))


@pytest.fixture
async def bot(settings: Settings) -> AsyncIterator[Any]:
    """The bot's objects as `python -m bot` builds them, used without Discord."""
    from bot.client.runner import build_bot

    bot = build_bot(settings)
    await bot.store.open()
    bot.engine.start()
    yield bot
    await bot.scheduler.close()
    await bot.engine.stop()
    await bot.store.close()


async def test_a_job_that_cannot_be_claimed_waits_in_line_and_runs_once_the_lock_goes(bot, caplog):
    service, scheduler = bot.dreams, bot.scheduler
    observer = Recorder()
    ticket = await service.submit(
        tiny_params(steps=1),
        user_id=10,
        guild_id=None,
        channel_id=None,
        interaction_id=1,
        observer=observer,
    )
    other = OtherConnection(bot.store.path)
    try:
        await shorten_busy_timeout(bot.store)
        other.hold()
        await scheduler.run_batch(await scheduler.queue.take_batch())
        assert [q.job_id for q in scheduler.queue.in_order()] == [ticket.job.id]
        assert (await service.jobs.get(ticket.job.id)).status is JobStatus.QUEUED
        assert any("not claimed" in r.getMessage() for r in caplog.records)
        other.release()
        await scheduler.run_batch(await scheduler.queue.take_batch())
    finally:
        other.close()
    await scheduler.drain()
    assert observer.succeeded_jobs == [ticket.job.id]
    assert observer.failed_jobs == []
    job = await service.jobs.get(ticket.job.id)
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1)
    assert await service.credits.check() == []
    assert await service.credits.balance(10) == 50 - ticket.job.cost

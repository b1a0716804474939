"""Faults the bot meets in the wild, through discord.py's real stack (SimCord): Discord
failing to take a result, the gateway dropping mid-job, the disk filling up, SQLite locked
by another connection, the engine thread dying. Each is made for real, and in each the job
ends once, charged once (or refunded once), and the bot goes on serving.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from bot.jobs.delivery import DELIVERY_RETRY_DELAYS
from data import JobStatus
from data.credits import LedgerKind
from tests.conftest import EngineGate, wait_until
from tests.discord_helpers import ephemeral_followups, has_result
from tests.test_faults import OtherConnection, shorten_busy_timeout

# Where a /dream's result goes: an edit of the interaction's original response, and a new
# channel message when that edit fails.
DELIVERY_ROUTES = (("PATCH", "/webhooks/*/messages/@original"), ("POST", "/channels/*/messages"))


@pytest.fixture
def settings(make_settings):
    # No progress edits: an injected fault then meets the result's delivery, never a
    # progress edit that happened to come first.
    return make_settings(progress_interval=1e9)


async def dream_on_hold(sim: Any, member: Any, **options: Any) -> tuple[Any, Any]:
    """A /dream whose job is claimed and waits on the held engine: (result, job row)."""
    result = await member.slash(
        sim.channel, "dream", **{"prompt": "a lighthouse", "steps": 1, "seed": 5, **options}
    )
    running = await sim.bot.scheduler.jobs.with_status(JobStatus.RUNNING)
    assert len(running) == 1, "the job is claimed and waits on the engine"
    return result, running[0]


async def books(sim: Any, member: Any) -> tuple[int, list[LedgerKind]]:
    """The member's balance and the kinds of their job's ledger rows; the books check out."""
    await sim.bot.scheduler.drain()
    assert await sim.bot.credits.check() == []
    credits = sim.bot.dreams.credits
    history = await credits.history(member.id)
    return await credits.balance(member.id), sorted(e.kind for e in history if e.job_id)


def lines(caplog: Any, text: str, level: int = logging.DEBUG) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage() and r.levelno >= level]


class ReleaseOn(logging.Handler):
    """Lets go of the other connection's lock when the bot logs `text`: the test chooses
    the moment of the job's life at which the lock goes."""

    def __init__(self, other: OtherConnection, text: str) -> None:
        super().__init__()
        self.other = other
        self.text = text

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.other.release()


@pytest.fixture
def other(sim):
    connection = OtherConnection(sim.settings.db_path)
    yield connection
    connection.close()


# -- Discord answering 5xx or 429 when a result is posted ---------------------------


@pytest.mark.parametrize("status", [503, 429])
async def test_a_result_discord_refuses_is_posted_on_a_later_try_and_charged_once(
    sim, gate, caplog, status
):
    caplog.set_level(logging.INFO, logger="bot.jobs.delivery")
    alice = sim.member("alice")
    result, job = await dream_on_hold(sim, alice)
    # discord.py has already tried these again itself (SimCord answers after that): both
    # the edit of the original response and the new message that stands in for it fail.
    for method, path in DELIVERY_ROUTES:
        sim.env.inject_error(method, path, status=status, times=1)
    await gate.open()
    await wait_until(sim.env, lambda: lines(caplog, "delivery attempt 1 failed"))
    assert not has_result(result)

    await sim.env.advance_time(DELIVERY_RETRY_DELAYS[0])
    await wait_until(sim.env, lambda: has_result(result))
    assert lines(caplog, "delivered on attempt 2")
    posted = [message for message in sim.channel.history() if message.embeds]
    assert [message.id for message in posted] == [result.response.id], "posted once"
    assert result.response.embeds[0].footer.text == f"job {job.id} · cost 1 credit · balance 49"
    assert await books(sim, alice) == (49, [LedgerKind.CHARGE])
    stored = await sim.bot.scheduler.jobs.get(job.id)
    assert (stored.status, stored.message_id) == (JobStatus.SUCCEEDED, result.response.id)


async def test_a_result_discord_keeps_refusing_is_given_up_after_bounded_tries(sim, gate, caplog):
    alice = sim.member("alice")
    result, job = await dream_on_hold(sim, alice)
    for method, path in DELIVERY_ROUTES:
        sim.env.inject_error(method, path, status=502, times=None)
    await gate.open()
    for tries, delay in enumerate(DELIVERY_RETRY_DELAYS, start=1):
        await wait_until(sim.env, lambda tries=tries: len(lines(caplog, "trying again")) == tries)
        await sim.env.advance_time(delay)
    attempts = len(DELIVERY_RETRY_DELAYS) + 1
    await wait_until(sim.env, lambda: lines(caplog, "not delivered", logging.ERROR))
    [gave_up] = lines(caplog, "not delivered", logging.ERROR)
    assert f"job={job.id} result not delivered after {attempts} attempt(s)" in gave_up
    assert not has_result(result)
    # Stored and charged once: nothing is refunded for a result Discord would not take.
    assert (await sim.bot.scheduler.jobs.get(job.id)).status is JobStatus.SUCCEEDED
    assert await books(sim, alice) == (49, [LedgerKind.CHARGE])


async def test_a_result_discord_refuses_for_good_is_not_tried_again(sim, gate, caplog):
    alice = sim.member("alice")
    await dream_on_hold(sim, alice)
    for method, path in DELIVERY_ROUTES:  # a 403: the bot may not post here any more
        sim.env.inject_error(method, path, status=403, code=50013, times=None)
    await gate.open()
    await wait_until(sim.env, lambda: lines(caplog, "not delivered", logging.ERROR))
    assert "after 1 attempt(s)" in lines(caplog, "not delivered")[0]
    assert not lines(caplog, "trying again")
    assert await books(sim, alice) == (49, [LedgerKind.CHARGE])


# -- the gateway disconnecting mid-job ---------------------------------------------------


async def reconnect(sim: Any, *, resume: bool) -> None:
    """The gateway comes back: resumed (the session and discord.py's cache kept), or a new
    session (READY empties the cache; the guilds are sent again). SimCord wires this for
    AutoShardedClient shards only (FakeShard.reconnect); our bot has one connection."""
    from simcord.backend import serializers

    ws = sim.bot.ws
    ws.open = True
    if resume:
        ws._gateway.feed("RESUMED", {})
        return
    backend = sim.env.backend
    ws._gateway.feed(
        "READY",
        {
            "v": 10,
            "user": dict(serializers.user_payload(backend.bot_user)),
            "guilds": [],
            "session_id": "simcord-session-new",
            "resume_gateway_url": "wss://simcord.invalid",
            "shard": [0, 1],
            "application": {"id": str(backend.application_id), "flags": 0},
        },
    )
    await sim.env.settle()
    for guild in backend.guilds.values():
        ws._gateway.feed("GUILD_CREATE", serializers.guild_create_payload(backend, guild))


@pytest.mark.parametrize("resume", [True, False], ids=["resumed", "new-session"])
async def test_a_job_finishes_and_posts_while_the_gateway_is_down(sim, gate, resume):
    alice = sim.member("alice")
    result, job = await dream_on_hold(sim, alice)
    await sim.bot.ws.close()  # no gateway event reaches the bot from here on
    sim.bot.dispatch("disconnect")
    await gate.open()
    # Results travel by REST, which does not need the gateway.
    await wait_until(sim.env, lambda: has_result(result))
    await reconnect(sim, resume=resume)
    assert sim.bot.get_channel(sim.channel.id) is not None
    again = await alice.slash(sim.channel, "dream", prompt="after the outage", steps=1)
    await wait_until(sim.env, lambda: has_result(again))
    assert (await sim.bot.scheduler.jobs.get(job.id)).message_id == result.response.id
    assert await books(sim, alice) == (48, [LedgerKind.CHARGE, LedgerKind.CHARGE])


# -- the disk filling up while images are written ---------------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs the kernel's /dev/full")
async def test_a_full_disk_fails_the_job_refunds_it_and_the_next_job_is_served(sim, gate, caplog):
    alice = sim.member("alice")
    result, job = await dream_on_hold(sim, alice, seed=5)
    folder = sim.settings.images_dir / str(job.id)
    folder.mkdir(parents=True)
    # Linux's always-full device: a write to it fails with ENOSPC, as on a full disk.
    (folder / "0-5.png").symlink_to("/dev/full")
    await gate.open()
    await wait_until(sim.env, lambda: ephemeral_followups(result))
    assert ephemeral_followups(result) == [
        "❌ The bot's disk is full, so the images could not be saved. Your 1 credit was refunded."
    ]
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert f"job={job.id} images not saved" in error.getMessage()
    assert "No space left on device" in error.getMessage()
    assert error.exc_info is None, "one line, not a traceback"
    assert not folder.exists(), "nothing half written is left behind"
    stored = await sim.bot.scheduler.jobs.get(job.id)
    assert (stored.status, stored.error) == (
        JobStatus.FAILED,
        "The bot's disk is full, so the images could not be saved.",
    )
    assert await books(sim, alice) == (50, [LedgerKind.CHARGE, LedgerKind.REFUND])

    ok = await alice.slash(sim.channel, "dream", prompt="space again", steps=1, seed=6)
    await wait_until(sim.env, lambda: has_result(ok))


# -- SQLite locked by another connection ------------------------------------------------


async def test_a_job_rides_out_a_write_lock_held_for_a_while(sim, gate, other, caplog):
    alice = sim.member("alice")
    result, job = await dream_on_hold(sim, alice)
    other.hold()
    waited = threading.Event()

    def on_statement(sql: str) -> None:
        # The bot's first write after the engine (storing the result) starts while the
        # lock is held; the other connection lets go a moment later, inside the timeout.
        if sql.startswith("BEGIN") and other.held and not waited.is_set():
            waited.set()
            threading.Timer(0.2, other.release).start()

    await sim.bot.store.db.set_trace_callback(on_statement)
    try:
        await gate.open()
        await wait_until(sim.env, lambda: has_result(result))
    finally:
        await sim.bot.store.db.set_trace_callback(None)
    assert waited.is_set()
    assert not lines(caplog, "locked by another connection"), "within the busy timeout"
    assert (await sim.bot.scheduler.jobs.get(job.id)).status is JobStatus.SUCCEEDED
    assert await books(sim, alice) == (49, [LedgerKind.CHARGE])


async def test_a_backup_running_through_a_job_neither_disturbs_nor_misses_it(sim, gate, tmp_path):
    alice = sim.member("alice")
    result, job = await dream_on_hold(sim, alice)
    posted = threading.Event()
    source = sqlite3.connect(sim.settings.db_path, check_same_thread=False)
    copy = sqlite3.connect(tmp_path / "copy.sqlite3", check_same_thread=False)

    def progress(status: int, remaining: int, total: int) -> None:
        posted.wait()  # the backup is under way for as long as the job runs

    backup = asyncio.ensure_future(
        asyncio.to_thread(source.backup, copy, pages=1, progress=progress)
    )
    try:
        await gate.open()
        await wait_until(sim.env, lambda: has_result(result))
    finally:
        posted.set()
        await backup
    [(status,)] = copy.execute("SELECT status FROM jobs WHERE id = ?", (job.id,)).fetchall()
    source.close()
    copy.close()
    assert status == JobStatus.SUCCEEDED, "the copy is of the database as it ended"
    assert await books(sim, alice) == (49, [LedgerKind.CHARGE])


async def test_a_lock_held_past_the_timeout_fails_the_job_and_refunds_it(sim, gate, other):
    alice = sim.member("alice")
    result, job = await dream_on_hold(sim, alice)
    await shorten_busy_timeout(sim.bot.store)
    other.hold()
    # The lock outlasts every try to store the result, then goes: the failure is written.
    release = ReleaseOn(other, "result not stored")
    logging.getLogger("bot.generation.handler").addHandler(release)
    try:
        await gate.open()
        await wait_until(sim.env, lambda: ephemeral_followups(result))
    finally:
        logging.getLogger("bot.generation.handler").removeHandler(release)
    assert ephemeral_followups(result) == [
        "❌ The bot's database was busy for too long, so the result could not be saved."
        " Your 1 credit was refunded."
    ]
    assert (await sim.bot.scheduler.jobs.get(job.id)).status is JobStatus.FAILED
    assert await books(sim, alice) == (50, [LedgerKind.CHARGE, LedgerKind.REFUND])
    ok = await alice.slash(sim.channel, "dream", prompt="the lock is gone", steps=1)
    await wait_until(sim.env, lambda: has_result(ok))


async def test_a_lock_that_outlasts_even_the_failure_leaves_the_job_for_the_next_start(
    sim, gate, other
):
    alice = sim.member("alice")
    result, job = await dream_on_hold(sim, alice)
    await shorten_busy_timeout(sim.bot.store)
    other.hold()
    release = ReleaseOn(other, "end not recorded")
    logging.getLogger("bot.jobs.scheduler").addHandler(release)
    try:
        await gate.open()
        await wait_until(sim.env, lambda: ephemeral_followups(result))
    finally:
        logging.getLogger("bot.jobs.scheduler").removeHandler(release)
    assert ephemeral_followups(result) == [
        "❌ The bot could not write to its database, so this job could not be finished now; it"
        " will be run again (or refunded) when the bot next starts."
    ]
    left = await sim.bot.scheduler.jobs.get(job.id)
    assert (left.status, left.attempts) == (JobStatus.RUNNING, 1)
    assert await books(sim, alice) == (49, [LedgerKind.CHARGE])

    await sim.restart()
    finished = f"{alice.mention} your job {job.id} finished after a restart."
    await wait_until(
        sim.env,
        lambda: any(m.content == finished for m in sim.channel.history()),
    )
    assert (await sim.bot.scheduler.jobs.get(job.id)).status is JobStatus.SUCCEEDED
    assert await books(sim, alice) == (49, [LedgerKind.CHARGE]), "charged once, run twice"


# -- the engine thread dying -------------------------------------------------------------


async def test_the_engine_thread_dying_fails_its_batch_once_and_a_new_thread_serves(
    sim, monkeypatch, caplog
):
    import engine.pipelines.batches

    real = engine.pipelines.batches.generate_batch

    def dies(loaded: Any, jobs: Any, *args: Any) -> Any:
        if jobs[0].params.prompt == "the last straw":
            # Not an Exception: it escapes the engine loop's own handler and ends the thread.
            raise SystemExit("a library gave up the thread")
        return real(loaded, jobs, *args)

    monkeypatch.setattr(engine.pipelines.batches, "generate_batch", dies)
    engine_worker = sim.bot.engine
    first_thread = engine_worker._thread
    sim.bot.scheduler.queue.max_batch = 2
    sim.bot.scheduler.queue.fits = None  # on a CPU, auto batches nothing
    # Carol's job waits on the held engine while Alice's and Bob's queue up behind it, to
    # run as one batch.
    carol, alice, bob = sim.member("carol"), sim.member("alice"), sim.member("bob")
    gate = EngineGate(engine_worker)
    try:
        held = await carol.slash(sim.channel, "dream", prompt="first", steps=1, seed=1)
        doomed = [
            await member.slash(sim.channel, "dream", prompt="the last straw", steps=1, seed=2)
            for member in (alice, bob)
        ]
    finally:
        await gate.open()
    await wait_until(sim.env, lambda: has_result(held))
    await wait_until(sim.env, lambda: all(ephemeral_followups(r) for r in doomed))
    for result in doomed:
        assert ephemeral_followups(result) == [
            "❌ The image engine stopped while running this job and was restarted."
            " Your 1 credit was refunded."
        ]
    for member in (alice, bob):
        assert await books(sim, member) == (50, [LedgerKind.CHARGE, LedgerKind.REFUND])
    assert len(lines(caplog, "the engine thread died", logging.CRITICAL)) == 1

    ok = await alice.slash(sim.channel, "dream", prompt="a new thread", steps=1)
    await wait_until(sim.env, lambda: has_result(ok))
    assert engine_worker.restarts == 1
    assert engine_worker._thread is not first_thread
    assert engine_worker.running

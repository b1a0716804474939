"""Issue 20 through SimCord: what the bot promised a member before it stopped is kept after
it starts again. A cancel of a running job is refunded, not run again; a result stored but
never posted (Discord down, an unexpected error, the bot dying between the two) is posted
once at the next start, by DM when it was private or its channel is gone."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import cogs.ui.presenter
from bot.jobs.delivery import DELIVERY_RETRY_DELAYS
from data import JobStatus
from data.credits import LedgerKind
from engine.pipelines.safety import save_tiny_checker
from tests.conftest import wait_until
from tests.discord_helpers import has_result, leave_job
from tests.test_community_discord import pixels, stored_pixels
from tests.test_faults_discord import (
    DELIVERY_ROUTES,
    books,
    dream_on_hold,
    lines,
)


@pytest.fixture
def settings(make_settings):
    return make_settings(progress_interval=1e9)


def results_in(channel: Any, job_id: int) -> list[Any]:
    """Messages in `channel` that show job `job_id`'s result (its embed's footer)."""
    return [
        m
        for m in channel.history()
        if m.embeds and (m.embeds[0].footer.text or "").startswith(f"job {job_id} ")
    ]


async def give_up_delivery(sim: Any, caplog: Any) -> None:
    """Let Discord fail every try at posting until the service gives the result up."""
    for tries, delay in enumerate(DELIVERY_RETRY_DELAYS, start=1):
        await wait_until(sim.env, lambda tries=tries: len(lines(caplog, "trying again")) == tries)
        await sim.env.advance_time(delay)
    await wait_until(sim.env, lambda: lines(caplog, "not delivered", logging.ERROR))


async def left_unposted(sim: Any, gate: Any, caplog: Any) -> None:
    """The held job runs while Discord fails every post of its result, until the service
    gives the result up; then Discord is back."""
    for method, path in DELIVERY_ROUTES:
        sim.env.inject_error(method, path, status=502, times=None)
    await gate.open()
    await give_up_delivery(sim, caplog)
    sim.env.backend.faults.clear()


# -- 1. a cancel of a running job ------------------------------------------------------


async def test_a_running_jobs_cancel_is_in_its_row_when_the_member_is_told(sim, gate):
    alice = sim.member("alice")
    _, job = await dream_on_hold(sim, alice)
    answer = await alice.slash(sim.channel, "cancel", job=job.id)
    assert "is stopping" in answer.response.content
    stored = await sim.bot.scheduler.jobs.get(job.id)
    assert stored.status is JobStatus.RUNNING
    assert stored.cancel_requested_at is not None, "recorded before the member was answered"
    await gate.open()
    await wait_until(sim.env, lambda: not sim.bot.scheduler.queue.running)
    await sim.bot.scheduler.drain()
    assert (await sim.bot.scheduler.jobs.get(job.id)).status is JobStatus.CANCELLED
    assert await books(sim, alice) == (50, [LedgerKind.CHARGE, LedgerKind.REFUND])


async def test_a_cancelled_job_left_running_by_a_crash_is_refunded_not_run_again(sim):
    alice = sim.member("alice")
    job = await leave_job(sim, alice, "running", 1)
    async with sim.bot.store.transaction() as db:
        await db.execute("UPDATE jobs SET cancel_requested_at = 1 WHERE id = ?", (job.id,))
    await sim.restart()
    await sim.bot.scheduler.drain()
    stored = await sim.bot.scheduler.jobs.get(job.id)
    assert (stored.status, stored.attempts) == (JobStatus.CANCELLED, 1), "never run again"
    assert not results_in(sim.channel, job.id)
    assert await books(sim, alice) == (50, [LedgerKind.CHARGE, LedgerKind.REFUND])
    [told] = alice.user.dm_channel.history()
    assert told.content == f"Job {job.id}: ❌ Cancelled. Your 1 credit was refunded."


async def test_a_failure_refunded_but_not_yet_told_is_told_once_at_the_next_start(sim):
    alice = sim.member("alice")
    job = await leave_job(sim, alice, "running", 1)
    # The bot died between the refund and the message that says so.
    await sim.bot.scheduler.jobs.finish(job.id, JobStatus.FAILED, error="The engine gave up.")
    await sim.restart()
    await sim.bot.scheduler.drain()
    [told] = alice.user.dm_channel.history()
    assert told.content == f"Job {job.id}: ❌ The engine gave up. Your 1 credit was refunded."
    await sim.restart()  # told once, not at every start
    await sim.bot.scheduler.drain()
    assert len(alice.user.dm_channel.history()) == 1
    assert await books(sim, alice) == (50, [LedgerKind.CHARGE, LedgerKind.REFUND])


# -- 2 and 3. a result stored but not posted --------------------------------------------


async def test_a_result_discord_refused_is_posted_once_at_the_next_start(sim, gate, caplog):
    alice = sim.member("alice")
    result, job = await dream_on_hold(sim, alice)
    await left_unposted(sim, gate, caplog)
    assert (await sim.bot.scheduler.jobs.get(job.id)).delivered_at is None

    await sim.restart()
    await wait_until(sim.env, lambda: bool(results_in(sim.channel, job.id)))
    await sim.bot.scheduler.drain()
    [posted] = results_in(sim.channel, job.id)
    assert posted.content == f"{alice.mention} your job {job.id} finished after a restart."
    assert posted.attachments, "with its images"
    stored = await sim.bot.scheduler.jobs.get(job.id)
    assert (stored.delivered_at is not None, stored.message_id) == (True, posted.id)
    assert not has_result(result)

    await sim.restart()  # and never twice
    await sim.bot.scheduler.drain()
    assert len(results_in(sim.channel, job.id)) == 1
    assert await books(sim, alice) == (49, [LedgerKind.CHARGE])


async def test_an_unexpected_error_while_posting_leaves_the_result_to_the_next_start(
    sim, gate, monkeypatch, caplog
):
    alice = sim.member("alice")
    _, job = await dream_on_hold(sim, alice)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in rendering the embed")

    monkeypatch.setattr(cogs.ui.presenter, "result_embed", broken)
    await gate.open()
    await give_up_delivery(sim, caplog)
    assert (await sim.bot.scheduler.jobs.get(job.id)).delivered_at is None
    monkeypatch.undo()  # the fixed version is deployed

    await sim.restart()
    await wait_until(sim.env, lambda: bool(results_in(sim.channel, job.id)))
    await sim.bot.scheduler.drain()
    assert len(results_in(sim.channel, job.id)) == 1
    assert await books(sim, alice) == (49, [LedgerKind.CHARGE])


async def test_a_private_result_not_posted_goes_to_the_members_dms(sim, gate, caplog):
    alice = sim.member("alice")
    await alice.slash(sim.channel, "prefer set", option="dm", value="yes")
    _, job = await dream_on_hold(sim, alice)
    await left_unposted(sim, gate, caplog)

    await sim.restart()
    dm = alice.user.dm_channel
    await wait_until(sim.env, lambda: dm is not None and bool(results_in(dm, job.id)))
    await sim.bot.scheduler.drain()
    assert not results_in(sim.channel, job.id), "a private result never lands in the channel"


async def test_a_result_the_bot_may_no_longer_post_in_its_channel_goes_by_dm(sim, gate, caplog):
    alice = sim.member("alice")
    _, job = await dream_on_hold(sim, alice)
    await left_unposted(sim, gate, caplog)
    # Meanwhile the bot lost the right to post in the channel (a 403, not worth retrying).
    sim.env.inject_error(
        "POST", f"/channels/{sim.channel.id}/messages", status=403, code=50013, times=None
    )

    await sim.restart()
    dm = alice.user.dm_channel
    await wait_until(sim.env, lambda: dm is not None and bool(results_in(dm, job.id)))
    await sim.bot.scheduler.drain()
    assert (await sim.bot.scheduler.jobs.get(job.id)).delivered_at is not None


class TestAFlaggedResultPostedAfterARestart:
    @pytest.fixture
    def settings(self, make_settings, tmp_path_factory):
        checker = save_tiny_checker(tmp_path_factory.mktemp("checker"), flag_everything=True)
        return make_settings(progress_interval=1e9, safety_checker=str(checker))

    async def test_stays_blurred(self, sim, gate, caplog):
        alice = sim.member("alice")
        _, job = await dream_on_hold(sim, alice)
        await left_unposted(sim, gate, caplog)

        await sim.restart()
        await wait_until(sim.env, lambda: bool(results_in(sim.channel, job.id)))
        await sim.bot.scheduler.drain()
        [posted] = results_in(sim.channel, job.id)
        shown = await pixels(posted.attachments[0])
        assert shown != stored_pixels(sim, job.id), "the review's blur is applied again"

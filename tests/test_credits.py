"""The credits ledger: grants, top-ups, charges with their job, refunds, the books' check."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.community.credits import CreditService, CreditsRefused
from bot.generation.options import STANDARD_JOB, price_units
from data import (
    CreditPolicy,
    CreditRepository,
    DuplicateInteraction,
    InsufficientCredits,
    JobRepository,
    JobStatus,
    LedgerKind,
    QueueCaps,
    QueueFull,
    Store,
)
from engine.api.params import GenerationParams

POLICY = CreditPolicy(starting=10, topup_amount=5, topup_ceiling=12, topup_interval=3600)


@pytest.fixture
async def store(tmp_path):
    store = Store(tmp_path / "bot.sqlite3")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def jobs(store):
    return JobRepository(store, POLICY)


@pytest.fixture
def credits(store):
    return CreditRepository(store, POLICY)


async def accept(jobs, user=1, cost=3, interaction=None, caps=None):
    return await jobs.create(
        kind="dream",
        user_id=user,
        guild_id=None,
        channel_id=None,
        interaction_id=interaction,
        params={"prompt": "x"},
        cost=cost,
        caps=caps,
    )


async def test_new_member_gets_the_starting_grant(credits):
    account = await credits.account(1)
    assert account.balance == 10
    [entry] = await credits.history(1)
    assert (entry.kind, entry.delta, entry.reason) == (LedgerKind.GRANT, 10, "welcome")
    assert (await credits.account(1)).balance == 10, "granted once"


async def test_topup_when_due_and_only_up_to_the_ceiling(credits, store):
    await credits.account(1)
    async with store.transaction() as db:  # pretend the last top-up was two hours ago
        await db.execute("UPDATE accounts SET topped_up_at = ?", (time.time() - 7200,))
    assert (await credits.account(1)).balance == 12  # +5 would pass the ceiling of 12
    assert (await credits.account(1)).balance == 12  # not due again yet
    kinds = [e.kind for e in await credits.history(1)]
    assert kinds == [LedgerKind.TOPUP, LedgerKind.GRANT]


async def test_charge_and_job_commit_together(jobs, credits):
    job = await accept(jobs, cost=4)
    assert job.cost == 4
    assert (await credits.account(1)).balance == 6
    assert [e.delta for e in await credits.history(1)] == [-4, 10]


async def test_too_few_credits_changes_nothing(jobs, credits, store):
    await accept(jobs, cost=8)
    with pytest.raises(InsufficientCredits, match="costs 5 credits and you have 2"):
        await accept(jobs, cost=5)
    assert (await credits.account(1)).balance == 2
    assert len(await jobs.with_status(*JobStatus)) == 1
    assert await credits.check() == []


async def test_an_interaction_is_charged_once(jobs, credits):
    first = await accept(jobs, cost=3, interaction=555)
    with pytest.raises(DuplicateInteraction) as caught:
        await accept(jobs, cost=3, interaction=555)
    assert caught.value.job.id == first.id
    assert (await credits.account(1)).balance == 7


async def test_concurrent_charges_never_overdraw(jobs, credits):
    """20 jobs of 3 credits at once against a balance of 10: exactly 3 are accepted."""
    results = await asyncio.gather(
        *(accept(jobs, cost=3) for _ in range(20)), return_exceptions=True
    )
    accepted = [r for r in results if not isinstance(r, Exception)]
    assert len(accepted) == 3
    assert all(isinstance(r, InsufficientCredits) for r in results if isinstance(r, Exception))
    assert (await credits.account(1)).balance == 1
    assert await credits.check() == []


async def test_failed_and_cancelled_jobs_are_refunded_exactly_once(jobs, credits):
    failed, cancelled, done = [await accept(jobs, cost=2) for _ in range(3)]
    assert await jobs.mark_running(failed.id)
    assert await jobs.finish(failed.id, JobStatus.FAILED, error="boom") == 2
    assert await jobs.finish(failed.id, JobStatus.FAILED, error="again") == 0
    assert await jobs.finish(cancelled.id, JobStatus.CANCELLED) == 2
    assert await jobs.finish(done.id, JobStatus.SUCCEEDED) == 0
    assert (await credits.account(1)).balance == 8
    refunds = [e for e in await credits.history(1, 20) if e.kind is LedgerKind.REFUND]
    assert sorted(e.job_id for e in refunds) == [failed.id, cancelled.id]
    assert await credits.check() == []


async def test_caps_per_member_and_in_all(jobs):
    caps = QueueCaps(per_member=2, total=3)
    await accept(jobs, user=1, cost=0, caps=caps)
    await accept(jobs, user=1, cost=0, caps=caps)
    with pytest.raises(QueueFull, match="You already have 2 job"):
        await accept(jobs, user=1, cost=0, caps=caps)
    await accept(jobs, user=2, cost=0, caps=caps)
    with pytest.raises(QueueFull, match="The queue is full"):
        await accept(jobs, user=3, cost=0, caps=caps)


async def test_check_finds_tampered_books(jobs, credits, store):
    job = await accept(jobs, cost=3)
    await jobs.finish(job.id, JobStatus.FAILED)
    async with store.transaction() as db:
        await db.execute("UPDATE accounts SET balance = 99 WHERE user_id = 1")
        await db.execute("DELETE FROM ledger WHERE kind = 'refund'")
    problems = await credits.check()
    assert "user 1: balance 99 but the ledger sums to 7" in problems
    assert f"job {job.id} ended failed but was not refunded" in problems


async def test_admin_requests_that_make_no_sense(credits):
    service = CreditService(credits, standard_price=1)
    for amount, message in ((0, "positive"), (-5, "positive"), (10**9, "more than the limit")):
        with pytest.raises(CreditsRefused, match=message):
            await service.grant(1, amount, is_bot=False, actor_id=9, reason="r")
    with pytest.raises(CreditsRefused, match="Bots do not use credits"):
        await service.grant(1, 5, is_bot=True, actor_id=9, reason="r")
    with pytest.raises(CreditsRefused, match="cannot be negative"):
        await service.set_balance(1, -1, is_bot=False, actor_id=9, reason="r")
    assert (await service.set_balance(1, 3, is_bot=False, actor_id=9, reason="r")).balance == 3
    assert (await service.grant(1, 4, is_bot=False, actor_id=9, reason="r")).balance == 7
    assert await credits.check() == []


def test_price_units_scale_with_pixels_steps_and_images():
    assert price_units(STANDARD_JOB) == 1
    bigger = GenerationParams("", "", 0, 40, 7.0, 1024, 1024, "Euler a", 4, "")
    assert price_units(bigger) == 4 * 2 * 4

"""`db check` on the books: every fault found from the rows themselves, not from constraints.

Each test builds real books (jobs charged, run, refunded through the repositories), then
damages them the way a bug or a careless migration could, and reads the check's lines.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from bot.community.credits import CreditService
from data import CreditPolicy, CreditRepository, Job, JobRepository, JobStatus, Store

POLICY = CreditPolicy(starting=50)


@dataclass
class Books:
    store: Store
    jobs: JobRepository
    credits: CreditRepository
    succeeded: Job  # user 1, cost 3
    failed: Job  # user 1, cost 3, refunded
    cancelled: Job  # user 1, cost 2, refunded
    queued: Job  # user 1, cost 1
    free: Job  # user 1, cost 0: never charged
    other: Job  # user 2, cost 4, succeeded

    async def check(self) -> list[str]:
        return await CreditService(self.credits, standard_price=1).check()

    async def tamper(self, *statements: str, foreign_keys: bool = True) -> None:
        """Run `statements` in one transaction; with foreign_keys=False as if the migration
        that declared them had been lost (the pragma cannot change inside a transaction)."""
        if not foreign_keys:
            await self.store.db.execute("PRAGMA foreign_keys = OFF")
        async with self.store.transaction() as db:
            for statement in statements:
                await db.execute(statement)

    async def entry(self, kind: str, job: Job) -> int:
        """The id of `job`'s ledger row of `kind`."""
        async with self.store.db.execute(
            "SELECT id FROM ledger WHERE kind = ? AND job_id = ?", (kind, job.id)
        ) as cursor:
            row = await cursor.fetchone()
        assert row is not None
        return int(row["id"])


async def accept(jobs: JobRepository, user: int, cost: int) -> Job:
    return await jobs.create(
        kind="dream",
        user_id=user,
        guild_id=None,
        channel_id=None,
        interaction_id=None,
        params={"prompt": "x"},
        cost=cost,
    )


@pytest.fixture
async def books(tmp_path) -> AsyncIterator[Books]:
    store = Store(tmp_path / "bot.sqlite3")
    await store.open()
    jobs = JobRepository(store, POLICY)
    credits = CreditRepository(store, POLICY)
    succeeded = await accept(jobs, 1, 3)
    assert await jobs.mark_running(succeeded.id)
    assert await jobs.complete(succeeded.id, [])
    failed = await accept(jobs, 1, 3)
    assert await jobs.mark_running(failed.id)
    assert await jobs.finish(failed.id, JobStatus.FAILED, error="boom") == 3
    cancelled = await accept(jobs, 1, 2)
    assert await jobs.finish(cancelled.id, JobStatus.CANCELLED) == 2
    queued = await accept(jobs, 1, 1)
    free = await accept(jobs, 1, 0)
    other = await accept(jobs, 2, 4)
    assert await jobs.finish(other.id, JobStatus.SUCCEEDED) == 0
    await credits.grant(2, 10, actor_id=9, reason="prize")
    await credits.set_balance(1, 40, actor_id=9, reason="reset")
    yield Books(store, jobs, credits, succeeded, failed, cancelled, queued, free, other)
    await store.close()


async def test_clean_books_report_nothing(books):
    assert await books.check() == []


async def test_a_second_refund_is_found_with_its_constraint_dropped(books):
    job = books.failed
    second_refund = (
        "INSERT INTO ledger (user_id, delta, kind, job_id, reason, created_at)"
        f" VALUES (1, 3, 'refund', {job.id}, 'again', 0)"
    )
    with pytest.raises(sqlite3.IntegrityError):  # what the check must not lean on
        await books.tamper(second_refund)
    # The balance follows the row, as a buggy refund path would do it: the member's sum
    # agrees, and only the job's own books show the fault.
    await books.tamper(
        "DROP INDEX ledger_one_refund",
        second_refund,
        "UPDATE accounts SET balance = balance + 3 WHERE user_id = 1",
    )
    assert await books.check() == [
        f"job {job.id} was refunded 2 times",
        f"job {job.id} was charged 3 but refunded 6",
    ]


async def test_a_second_charge_is_found_with_its_constraint_dropped(books):
    job = books.succeeded
    await books.tamper(
        "DROP INDEX ledger_one_charge",
        "INSERT INTO ledger (user_id, delta, kind, job_id, created_at)"
        f" VALUES (1, -3, 'charge', {job.id}, 0)",
        "UPDATE accounts SET balance = balance - 3 WHERE user_id = 1",
    )
    assert await books.check() == [
        f"job {job.id} was charged 2 times",
        f"job {job.id} costs 3 but was charged 6",
    ]


async def test_a_tampered_balance(books):
    await books.tamper("UPDATE accounts SET balance = 99 WHERE user_id = 1")
    assert await books.check() == ["user 1: balance 99 but the ledger sums to 40"]


async def test_a_balance_below_zero_with_its_constraint_ignored(books):
    await books.tamper(
        "PRAGMA ignore_check_constraints = ON",
        "UPDATE accounts SET balance = -1 WHERE user_id = 1",
        "PRAGMA ignore_check_constraints = OFF",
    )
    assert await books.check() == [
        "user 1: balance -1 but the ledger sums to 40",
        "user 1: balance -1 is below zero",
    ]


async def test_a_charge_that_differs_from_the_cost(books):
    job = books.succeeded
    await books.tamper(
        f"UPDATE ledger SET delta = -5 WHERE kind = 'charge' AND job_id = {job.id}",
        "UPDATE accounts SET balance = balance - 2 WHERE user_id = 1",
    )
    assert await books.check() == [f"job {job.id} costs 3 but was charged 5"]


async def test_a_free_job_charged(books):
    job = books.free
    await books.tamper(
        "INSERT INTO ledger (user_id, delta, kind, job_id, created_at)"
        f" VALUES (1, -2, 'charge', {job.id}, 0)",
        "UPDATE accounts SET balance = balance - 2 WHERE user_id = 1",
    )
    assert await books.check() == [f"job {job.id} costs 0 but was charged 2"]


async def test_a_refund_of_a_succeeded_job(books):
    job = books.succeeded
    await books.tamper(
        "INSERT INTO ledger (user_id, delta, kind, job_id, created_at)"
        f" VALUES (1, 3, 'refund', {job.id}, 0)",
        "UPDATE accounts SET balance = balance + 3 WHERE user_id = 1",
    )
    assert await books.check() == [f"job {job.id} succeeded but was refunded 3"]


async def test_a_refund_of_a_job_still_queued(books):
    job = books.queued
    await books.tamper(
        "INSERT INTO ledger (user_id, delta, kind, job_id, created_at)"
        f" VALUES (1, 1, 'refund', {job.id}, 0)",
        "UPDATE accounts SET balance = balance + 1 WHERE user_id = 1",
    )
    assert await books.check() == [f"job {job.id} is queued but was refunded 1"]


async def test_a_refund_above_the_charge(books):
    job = books.cancelled
    await books.tamper(
        f"UPDATE ledger SET delta = 7 WHERE kind = 'refund' AND job_id = {job.id}",
        "UPDATE accounts SET balance = balance + 5 WHERE user_id = 1",
    )
    assert await books.check() == [f"job {job.id} was charged 2 but refunded 7"]


async def test_a_failed_job_not_refunded(books):
    job = books.failed
    await books.tamper(
        f"DELETE FROM ledger WHERE kind = 'refund' AND job_id = {job.id}",
        "UPDATE accounts SET balance = balance - 3 WHERE user_id = 1",
    )
    assert await books.check() == [f"job {job.id} ended failed but was not refunded"]


async def test_a_refund_to_another_member(books):
    job = books.failed
    await books.tamper(
        f"UPDATE ledger SET user_id = 2 WHERE kind = 'refund' AND job_id = {job.id}",
        "UPDATE accounts SET balance = balance - 3 WHERE user_id = 1",
        "UPDATE accounts SET balance = balance + 3 WHERE user_id = 2",
    )
    assert await books.check() == [
        f"job {job.id} belongs to user 1 but its charge or refund went to user 2"
    ]


async def test_a_grant_that_names_a_job(books):
    job = books.succeeded
    await books.tamper(
        "INSERT INTO ledger (user_id, delta, kind, job_id, reason, created_at)"
        f" VALUES (1, 5, 'grant', {job.id}, 'sorry', 0)",
        "UPDATE accounts SET balance = balance + 5 WHERE user_id = 1",
    )
    entry = await books.entry("grant", job)
    assert await books.check() == [
        f"ledger row {entry}: grant +5 for user 1 names job {job.id};"
        " only charges and refunds belong to a job"
    ]


async def test_a_charge_that_names_no_job(books):
    job = books.succeeded
    entry = await books.entry("charge", job)
    await books.tamper(f"UPDATE ledger SET job_id = NULL WHERE id = {entry}")
    assert await books.check() == [
        f"job {job.id} costs 3 but was charged 0",
        f"ledger row {entry}: charge -3 for user 1 names no job",
    ]


async def test_ledger_rows_of_a_job_that_does_not_exist(books):
    job = books.failed
    charge, refund = await books.entry("charge", job), await books.entry("refund", job)
    await books.tamper(f"DELETE FROM jobs WHERE id = {job.id}", foreign_keys=False)
    assert await books.check() == [
        f"ledger row {charge}: charge -3 for user 1 names job {job.id}, which does not exist",
        f"ledger row {refund}: refund +3 for user 1 names job {job.id}, which does not exist",
    ]


async def test_a_member_whose_account_is_gone(books):
    await books.tamper("DELETE FROM accounts WHERE user_id = 1", foreign_keys=False)
    assert await books.check() == [
        "user 1 has no account but the ledger sums to 40",
        f"job {books.queued.id} is queued but its owner has no account",
    ]

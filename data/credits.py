"""Accounts and the append-only credits ledger.

Functions taking `db` run inside a transaction the caller holds (`Store.transaction()`), so
a charge and the job it pays for commit together or not at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

import aiosqlite

from data.store import Store


class LedgerKind(StrEnum):
    GRANT = "grant"
    TOPUP = "topup"
    CHARGE = "charge"
    REFUND = "refund"
    ADJUST = "adjust"


@dataclass(frozen=True, slots=True)
class CreditPolicy:
    """Starting grant, and a periodic free top-up up to a ceiling, applied on next touch."""

    starting: int = 50
    topup_amount: int = 20
    topup_ceiling: int = 50
    topup_interval: float = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Account:
    user_id: int
    balance: int
    created_at: float
    topped_up_at: float

    def next_topup(self, policy: CreditPolicy) -> float:
        return self.topped_up_at + policy.topup_interval


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: int
    user_id: int
    delta: int
    kind: LedgerKind
    job_id: int | None
    reason: str | None
    actor_id: int | None
    created_at: float


class InsufficientCredits(Exception):
    def __init__(self, balance: int, cost: int) -> None:
        super().__init__(f"This costs {cost} credits and you have {balance}.")
        self.balance = balance
        self.cost = cost


def _account(row: aiosqlite.Row) -> Account:
    return Account(row["user_id"], row["balance"], row["created_at"], row["topped_up_at"])


async def _one(
    db: aiosqlite.Connection, sql: str, args: tuple[object, ...]
) -> aiosqlite.Row | None:
    async with db.execute(sql, args) as cursor:
        return await cursor.fetchone()


async def append(
    db: aiosqlite.Connection,
    user_id: int,
    delta: int,
    kind: LedgerKind,
    *,
    job_id: int | None = None,
    reason: str | None = None,
    actor_id: int | None = None,
) -> None:
    """A ledger row and the matching balance change; the caller holds the transaction."""
    async with db.execute(
        "INSERT INTO ledger (user_id, delta, kind, job_id, reason, actor_id, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (user_id, delta, kind, job_id, reason, actor_id, time.time()),
    ):
        pass
    async with db.execute(
        "UPDATE accounts SET balance = balance + ? WHERE user_id = ?", (delta, user_id)
    ):
        pass


async def touch(db: aiosqlite.Connection, user_id: int, policy: CreditPolicy) -> Account:
    """The member's account, created with the starting grant, topped up when one is due."""
    now = time.time()
    row = await _one(db, "SELECT * FROM accounts WHERE user_id = ?", (user_id,))
    if row is None:
        async with db.execute(
            "INSERT INTO accounts (user_id, balance, created_at, topped_up_at) VALUES (?, 0, ?, ?)",
            (user_id, now, now),
        ):
            pass
        if policy.starting > 0:
            await append(db, user_id, policy.starting, LedgerKind.GRANT, reason="welcome")
    else:
        account = _account(row)
        if now >= account.next_topup(policy):
            room = policy.topup_ceiling - account.balance
            if room > 0 and policy.topup_amount > 0:
                await append(db, user_id, min(room, policy.topup_amount), LedgerKind.TOPUP)
            async with db.execute(
                "UPDATE accounts SET topped_up_at = ? WHERE user_id = ?", (now, user_id)
            ):
                pass
    row = await _one(db, "SELECT * FROM accounts WHERE user_id = ?", (user_id,))
    assert row is not None
    return _account(row)


async def charge(db: aiosqlite.Connection, user_id: int, cost: int, job_id: int) -> None:
    """Take `cost` if the balance covers it: one conditional UPDATE, never read-then-write."""
    async with db.execute(
        "UPDATE accounts SET balance = balance - ? WHERE user_id = ? AND balance >= ?",
        (cost, user_id, cost),
    ) as cursor:
        charged = cursor.rowcount == 1
    if not charged:
        row = await _one(db, "SELECT balance FROM accounts WHERE user_id = ?", (user_id,))
        raise InsufficientCredits(row["balance"] if row else 0, cost)
    async with db.execute(
        "INSERT INTO ledger (user_id, delta, kind, job_id, created_at) VALUES (?, ?, ?, ?, ?)",
        (user_id, -cost, LedgerKind.CHARGE, job_id, time.time()),
    ):
        pass


async def refund(db: aiosqlite.Connection, job_id: int, reason: str) -> int:
    """Give back what a job was charged, once; returns the amount (0 if nothing to refund)."""
    row = await _one(
        db,
        "SELECT user_id, -delta AS cost FROM ledger WHERE job_id = ? AND kind = ? AND NOT EXISTS"
        " (SELECT 1 FROM ledger WHERE job_id = ? AND kind = ?)",
        (job_id, LedgerKind.CHARGE, job_id, LedgerKind.REFUND),
    )
    if row is None or row["cost"] <= 0:
        return 0
    await append(db, row["user_id"], row["cost"], LedgerKind.REFUND, job_id=job_id, reason=reason)
    return int(row["cost"])


class CreditRepository:
    def __init__(self, store: Store, policy: CreditPolicy) -> None:
        self._store = store
        self.policy = policy

    async def account(self, user_id: int, policy: CreditPolicy | None = None) -> Account:
        """The account, created or topped up by `policy` (a server's; the bot's by default)."""
        async with self._store.transaction() as db:
            return await touch(db, user_id, policy or self.policy)

    async def balance(self, user_id: int) -> int:
        """The balance as it stands: no account is created and no top-up given, so reading
        it after a job never applies the bot's top-up over a server's."""
        row = await _one(
            self._store.db, "SELECT balance FROM accounts WHERE user_id = ?", (user_id,)
        )
        return int(row["balance"]) if row is not None else 0

    async def grant(
        self, user_id: int, amount: int, *, actor_id: int | None, reason: str
    ) -> Account:
        async with self._store.transaction() as db:
            await touch(db, user_id, self.policy)
            await append(db, user_id, amount, LedgerKind.ADJUST, reason=reason, actor_id=actor_id)
            row = await _one(db, "SELECT * FROM accounts WHERE user_id = ?", (user_id,))
        assert row is not None
        return _account(row)

    async def set_balance(
        self, user_id: int, balance: int, *, actor_id: int | None, reason: str
    ) -> Account:
        async with self._store.transaction() as db:
            account = await touch(db, user_id, self.policy)
            delta = balance - account.balance
            if delta:
                await append(
                    db, user_id, delta, LedgerKind.ADJUST, reason=reason, actor_id=actor_id
                )
            row = await _one(db, "SELECT * FROM accounts WHERE user_id = ?", (user_id,))
        assert row is not None
        return _account(row)

    async def history(self, user_id: int, limit: int = 10) -> list[LedgerEntry]:
        async with self._store.db.execute(
            "SELECT * FROM ledger WHERE user_id = ? ORDER BY id DESC LIMIT ?", (user_id, limit)
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            LedgerEntry(
                r["id"],
                r["user_id"],
                r["delta"],
                LedgerKind(r["kind"]),
                r["job_id"],
                r["reason"],
                r["actor_id"],
                r["created_at"],
            )
            for r in rows
        ]

    async def top(self, limit: int = 10) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(user, balance) of the largest balances and (user, spent) of the largest spenders."""
        db = self._store.db
        async with db.execute(
            "SELECT user_id, balance FROM accounts ORDER BY balance DESC, user_id LIMIT ?", (limit,)
        ) as cursor:
            balances = [(r[0], r[1]) for r in await cursor.fetchall()]
        async with db.execute(
            "SELECT user_id, -SUM(delta) AS spent FROM ledger WHERE kind IN ('charge', 'refund')"
            " GROUP BY user_id HAVING spent > 0 ORDER BY spent DESC, user_id LIMIT ?",
            (limit,),
        ) as cursor:
            spenders = [(r[0], r[1]) for r in await cursor.fetchall()]
        return balances, spenders

    async def check(self) -> list[str]:
        """Every way the books can be wrong, as sentences; empty when all is well."""
        problems = []
        for sentence, sql in BOOK_CHECKS:
            async with self._store.db.execute(sql) as cursor:
                problems += [sentence.format(*row) for row in await cursor.fetchall()]
        return problems


BOOK_CHECKS: tuple[tuple[str, str], ...] = (
    (
        "user {0}: balance {1} but the ledger sums to {2}",
        (
            "SELECT a.user_id, a.balance, COALESCE(SUM(l.delta), 0) AS total FROM accounts a"
            " LEFT JOIN ledger l ON l.user_id = a.user_id GROUP BY a.user_id"
            " HAVING a.balance != total"
        ),
    ),
    (
        "job {0} was charged {1} times",
        (
            "SELECT job_id, COUNT(*) FROM ledger WHERE kind = 'charge' AND job_id IS NOT NULL"
            " GROUP BY job_id HAVING COUNT(*) > 1"
        ),
    ),
    (
        "job {0} costs {1} but was charged {2}",
        (
            "SELECT j.id, j.cost, COALESCE(-SUM(l.delta), 0) AS charged FROM jobs j"
            " LEFT JOIN ledger l ON l.job_id = j.id AND l.kind = 'charge' WHERE j.cost > 0"
            " GROUP BY j.id HAVING charged != j.cost"
        ),
    ),
    (
        "job {0} ended {1} but was not refunded",
        (
            "SELECT j.id, j.status FROM jobs j WHERE j.cost > 0"
            " AND j.status IN ('failed', 'cancelled') AND NOT EXISTS"
            " (SELECT 1 FROM ledger l WHERE l.job_id = j.id AND l.kind = 'refund')"
        ),
    ),
    (
        "job {0} succeeded but was refunded",
        (
            "SELECT j.id FROM jobs j JOIN ledger l ON l.job_id = j.id AND l.kind = 'refund'"
            " WHERE j.status = 'succeeded'"
        ),
    ),
    (
        "job {0} is {1} but its owner has no account",
        (
            "SELECT j.id, j.status FROM jobs j WHERE j.status IN ('queued', 'running')"
            " AND j.cost > 0 AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.user_id = j.user_id)"
        ),
    ),
)

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

    async def has_account(self, user_id: int) -> bool:
        """Whether the member has an account yet (a read that opens none)."""
        row = await _one(self._store.db, "SELECT 1 FROM accounts WHERE user_id = ?", (user_id,))
        return row is not None

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
        """Every way the books can be wrong, one line each; empty when all is well.

        Worked out from the rows alone: the unique indexes and foreign keys that should keep
        these faults out are what a migration might drop, so none is taken on trust.
        """
        problems = []
        for check in BOOK_CHECKS:
            async with self._store.db.execute(check.sql()) as cursor:
                for row in await cursor.fetchall():
                    values = dict(zip(row.keys(), row, strict=True))
                    problems += [
                        rule.line.format(**values)
                        for index, rule in enumerate(check.rules)
                        if values[f"rule{index}"]
                    ]
        return problems


@dataclass(frozen=True, slots=True)
class BookRule:
    """One way the books can be wrong: an SQL condition on a row of its check's source, and
    the line that reports it, formatted from that row's columns."""

    when: str
    line: str


@dataclass(frozen=True, slots=True)
class BookCheck:
    """A source with one row per member, job or ledger row, and the rules each row must pass.

    One query per check, whatever the number of rules or jobs: a store holds tens of thousands
    of jobs, and `db check` runs beside a live bot.
    """

    source: str
    order: str  # the report reads member by member, job by job, row by row
    rules: tuple[BookRule, ...]

    def sql(self) -> str:
        flags = ", ".join(f"({rule.when}) AS rule{i}" for i, rule in enumerate(self.rules))
        failing = " OR ".join(f"({rule.when})" for rule in self.rules)
        return f"SELECT *, {flags} FROM ({self.source}) WHERE {failing} ORDER BY {self.order}"


# The ledger is summed per member and per job before it is joined to anything: that is one
# pass over it, and stays one pass if the indexes on `ledger.job_id` are ever dropped (a join
# on the bare table would then scan the ledger once per job).
_MEMBERS = (
    "WITH per_user AS (SELECT user_id, SUM(delta) AS total FROM ledger GROUP BY user_id)"
    " SELECT a.user_id AS user, a.balance AS balance, COALESCE(p.total, 0) AS total,"
    " 1 AS has_account FROM accounts a LEFT JOIN per_user p ON p.user_id = a.user_id"
    " UNION ALL"
    " SELECT p.user_id, NULL, p.total, 0 FROM per_user p"
    " WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.user_id = p.user_id)"
)

_JOBS = (
    "WITH per_job AS (SELECT job_id,"
    " SUM(kind = 'charge') AS charges,"
    " -SUM(CASE WHEN kind = 'charge' THEN delta ELSE 0 END) AS charged,"
    " SUM(kind = 'refund') AS refunds,"
    " SUM(CASE WHEN kind = 'refund' THEN delta ELSE 0 END) AS refunded,"
    " MIN(CASE WHEN kind IN ('charge', 'refund') THEN user_id END) AS low_user,"
    " MAX(CASE WHEN kind IN ('charge', 'refund') THEN user_id END) AS high_user"
    " FROM ledger WHERE job_id IS NOT NULL GROUP BY job_id)"
    " SELECT j.id AS job, j.user_id AS user, j.status AS status, j.cost AS cost,"
    " COALESCE(p.charges, 0) AS charges, COALESCE(p.charged, 0) AS charged,"
    " COALESCE(p.refunds, 0) AS refunds, COALESCE(p.refunded, 0) AS refunded,"
    " CASE WHEN p.low_user != j.user_id THEN p.low_user"
    " WHEN p.high_user != j.user_id THEN p.high_user END AS stranger,"
    " a.user_id IS NOT NULL AS has_account"
    " FROM jobs j LEFT JOIN per_job p ON p.job_id = j.id"
    " LEFT JOIN accounts a ON a.user_id = j.user_id"
)

# Only the ledger rows that can be wrong on their own: those naming a job, and the charges
# and refunds (which always should).
_ENTRIES = (
    "SELECT l.id AS entry, l.user_id AS user, l.kind AS kind, l.delta AS delta, l.job_id AS job,"
    " j.id IS NOT NULL AS job_exists FROM ledger l LEFT JOIN jobs j ON j.id = l.job_id"
    " WHERE l.job_id IS NOT NULL OR l.kind IN ('charge', 'refund')"
)

# The rules follow how the books are written. A job with a cost is charged exactly that, once,
# in the transaction that creates it (data/jobs.py `create`); a job without one is never
# charged. Only `finish` refunds, in the transaction that ends a pending job failed or
# cancelled, and only a job that has a charge; it gives back the whole charge, to the member
# charged: there are no partial refunds, so a refund other than the charge is a fault either way.
BOOK_CHECKS: tuple[BookCheck, ...] = (
    BookCheck(
        _MEMBERS,
        "user",
        (
            BookRule(
                "has_account AND balance != total",
                "user {user}: balance {balance} but the ledger sums to {total}",
            ),
            BookRule("has_account AND balance < 0", "user {user}: balance {balance} is below zero"),
            BookRule(
                "NOT has_account", "user {user} has no account but the ledger sums to {total}"
            ),
        ),
    ),
    BookCheck(
        _JOBS,
        "job",
        (
            BookRule("charges > 1", "job {job} was charged {charges} times"),
            BookRule("charged != cost", "job {job} costs {cost} but was charged {charged}"),
            BookRule("refunds > 1", "job {job} was refunded {refunds} times"),
            BookRule(
                "refunds > 0 AND refunded != charged",
                "job {job} was charged {charged} but refunded {refunded}",
            ),
            BookRule(
                "refunds > 0 AND status = 'succeeded'",
                "job {job} succeeded but was refunded {refunded}",
            ),
            BookRule(
                "refunds > 0 AND status IN ('queued', 'running')",
                "job {job} is {status} but was refunded {refunded}",
            ),
            BookRule(
                "charges > 0 AND refunds = 0 AND status IN ('failed', 'cancelled')",
                "job {job} ended {status} but was not refunded",
            ),
            BookRule(
                "stranger IS NOT NULL",
                "job {job} belongs to user {user} but its charge or refund went to user {stranger}",
            ),
            BookRule(
                "NOT has_account AND cost > 0 AND status IN ('queued', 'running')",
                "job {job} is {status} but its owner has no account",
            ),
        ),
    ),
    BookCheck(
        _ENTRIES,
        "entry",
        (
            BookRule(
                "job IS NOT NULL AND NOT job_exists",
                "ledger row {entry}: {kind} {delta:+d} for user {user} names job {job},"
                " which does not exist",
            ),
            BookRule(
                "job IS NOT NULL AND kind NOT IN ('charge', 'refund')",
                "ledger row {entry}: {kind} {delta:+d} for user {user} names job {job};"
                " only charges and refunds belong to a job",
            ),
            BookRule(
                "job IS NULL AND kind IN ('charge', 'refund')",
                "ledger row {entry}: {kind} {delta:+d} for user {user} names no job",
            ),
        ),
    ),
)

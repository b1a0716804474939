"""Jobs and their output images."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiosqlite

import data.credits as credits
from data.credits import CreditPolicy
from data.store import Store


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    kind: str
    status: JobStatus
    user_id: int
    guild_id: int | None
    channel_id: int | None
    interaction_id: int | None
    params: dict[str, Any]
    error: str | None
    message_id: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    cost: int = 0
    attempts: int = 0
    parent_id: int | None = None
    action: str | None = None
    deleted_at: float | None = None
    # The result went to the requester's DMs: nobody else may see it or press its buttons.
    private: bool = False
    # Set when retention removed the job's files (bot/jobs/retention.py); the row stays.
    expired_at: float | None = None
    # The member cancelled it while it ran; honoured at start-up if the bot died first.
    cancel_requested_at: float | None = None
    # Its result was posted; a succeeded job without it is posted at start-up.
    delivered_at: float | None = None

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Job:
        return cls(
            id=row["id"],
            kind=row["kind"],
            status=JobStatus(row["status"]),
            user_id=row["user_id"],
            guild_id=row["guild_id"],
            channel_id=row["channel_id"],
            interaction_id=row["interaction_id"],
            params=json.loads(row["params"]),
            error=row["error"],
            message_id=row["message_id"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            cost=row["cost"],
            attempts=row["attempts"],
            parent_id=row["parent_id"],
            action=row["action"],
            deleted_at=row["deleted_at"],
            private=bool(row["private"]),
            expired_at=row["expired_at"],
            cancel_requested_at=row["cancel_requested_at"],
            delivered_at=row["delivered_at"],
        )


@dataclass(frozen=True, slots=True)
class JobImage:
    job_id: int
    idx: int
    seed: int
    path: str
    width: int
    height: int
    infotext: str


class DuplicateInteraction(Exception):
    """The interaction already has a job: a retried or doubled interaction."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"interaction {job.interaction_id} already has job {job.id}")
        self.job = job


class DuplicateAction(Exception):
    """The member already has this action pending (a double click): nothing changes."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} already does this")
        self.job = job


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an action job comes from: the job whose result was clicked, and what was asked
    (`key` identifies the click, e.g. 'upscale:12:0', for double-click protection)."""

    parent_id: int | None  # None for a job made from nothing posted (a /train request)
    action: str
    key: str


class QueueFull(Exception):
    """A cap on queued jobs was reached; the message says which, for the member."""


@dataclass(frozen=True, slots=True)
class QueueCaps:
    per_member: int = 3  # queued or running, per member
    total: int = 100  # queued, everyone together


PENDING = (JobStatus.QUEUED, JobStatus.RUNNING)


async def _count(db: aiosqlite.Connection, sql: str, args: tuple[object, ...]) -> int:
    async with db.execute(sql, args) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


class JobRepository:
    def __init__(self, store: Store, policy: CreditPolicy | None = None) -> None:
        self._store = store
        self.policy = policy or CreditPolicy()

    async def create(
        self,
        *,
        kind: str,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        interaction_id: int | None,
        params: dict[str, Any],
        cost: int = 0,
        caps: QueueCaps | None = None,
        origin: Origin | None = None,
        credit_policy: CreditPolicy | None = None,
        private: bool = False,
    ) -> Job:
        """Accept a job: caps checked, row written and `cost` charged, all in one transaction.

        Raises DuplicateInteraction or DuplicateAction (nothing changes), QueueFull or
        InsufficientCredits.
        """
        async with self._store.transaction() as db:
            if interaction_id is not None:
                existing = await self._by_interaction(db, interaction_id)
                if existing is not None:
                    raise DuplicateInteraction(existing)
            if origin is not None:
                pending = await self._pending_action(db, user_id, origin.key)
                if pending is not None:
                    raise DuplicateAction(pending)
            if caps is not None:
                await self._check_caps(db, user_id, caps)
            if cost > 0:
                await credits.touch(db, user_id, credit_policy or self.policy)
            async with db.execute(
                "INSERT INTO jobs (kind, status, user_id, guild_id, channel_id, interaction_id,"
                " params, cost, created_at, parent_id, action, action_key, private)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (
                    kind,
                    JobStatus.QUEUED,
                    user_id,
                    guild_id,
                    channel_id,
                    interaction_id,
                    json.dumps(params, ensure_ascii=False),
                    cost,
                    time.time(),
                    origin.parent_id if origin else None,
                    origin.action if origin else None,
                    origin.key if origin else None,
                    int(private),
                ),
            ) as cursor:
                row = await cursor.fetchone()
            assert row is not None
            job = Job.from_row(row)
            if cost > 0:
                await credits.charge(db, user_id, cost, job.id)
        return job

    @staticmethod
    async def _by_interaction(db: aiosqlite.Connection, interaction_id: int) -> Job | None:
        async with db.execute(
            "SELECT * FROM jobs WHERE interaction_id = ?", (interaction_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return Job.from_row(row) if row else None

    @staticmethod
    async def _pending_action(db: aiosqlite.Connection, user_id: int, key: str) -> Job | None:
        async with db.execute(
            "SELECT * FROM jobs WHERE user_id = ? AND action_key = ? AND status IN (?, ?)",
            (user_id, key, *PENDING),
        ) as cursor:
            row = await cursor.fetchone()
        return Job.from_row(row) if row else None

    @staticmethod
    async def _check_caps(db: aiosqlite.Connection, user_id: int, caps: QueueCaps) -> None:
        mine = await _count(
            db,
            "SELECT COUNT(*) FROM jobs WHERE user_id = ? AND status IN (?, ?)",
            (user_id, *PENDING),
        )
        if mine >= caps.per_member:
            raise QueueFull(
                f"You already have {mine} job(s) waiting or running (the limit is "
                f"{caps.per_member}). Try again when one finishes."
            )
        queued = await _count(db, "SELECT COUNT(*) FROM jobs WHERE status = ?", (JobStatus.QUEUED,))
        if queued >= caps.total:
            raise QueueFull(f"The queue is full ({queued} jobs). Try again in a few minutes.")

    async def get(self, job_id: int) -> Job | None:
        async with self._store.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return Job.from_row(row) if row else None

    async def by_message(self, message_id: int) -> Job | None:
        """The job whose result (or progress) a message shows."""
        async with self._store.db.execute(
            "SELECT * FROM jobs WHERE message_id = ? ORDER BY id DESC LIMIT 1", (message_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return Job.from_row(row) if row else None

    async def mark_deleted(self, job_id: int) -> bool:
        """Record that a result was deleted; False if it already was."""
        async with (
            self._store.transaction() as db,
            db.execute(
                "UPDATE jobs SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL",
                (time.time(), job_id),
            ) as cursor,
        ):
            return cursor.rowcount == 1

    async def by_interaction(self, interaction_id: int) -> Job | None:
        async with self._store.db.execute(
            "SELECT * FROM jobs WHERE interaction_id = ?", (interaction_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return Job.from_row(row) if row else None

    async def with_status(self, *statuses: JobStatus) -> list[Job]:
        marks = ", ".join("?" for _ in statuses)
        async with self._store.db.execute(
            f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY id", statuses
        ) as cursor:
            rows = await cursor.fetchall()
        return [Job.from_row(row) for row in rows]

    async def request_cancel(self, job_id: int) -> bool:
        """Record a member's cancel of a running job before they are told it is stopping;
        False if the job is no longer running (it ended meanwhile)."""
        async with (
            self._store.transaction() as db,
            db.execute(
                "UPDATE jobs SET cancel_requested_at = ? WHERE id = ? AND status = ?",
                (time.time(), job_id, JobStatus.RUNNING),
            ) as cursor,
        ):
            return cursor.rowcount == 1

    async def mark_delivered(self, job_id: int, message_id: int | None) -> None:
        """The member was told: the result posted (in `message_id`, if it is anywhere the
        bot can find it), or the failure said."""
        async with (
            self._store.transaction() as db,
            db.execute(
                "UPDATE jobs SET delivered_at = ?, message_id = COALESCE(?, message_id)"
                " WHERE id = ?",
                (time.time(), message_id, job_id),
            ),
        ):
            pass

    async def undelivered(self) -> list[Job]:
        """Ended jobs whose member was never told (a crash, or Discord down for good): a
        result not posted, a failure not said; oldest first, not those deleted or expired."""
        async with self._store.db.execute(
            "SELECT * FROM jobs WHERE status IN (?, ?, ?) AND delivered_at IS NULL"
            " AND deleted_at IS NULL AND expired_at IS NULL ORDER BY id",
            (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED),
        ) as cursor:
            rows = await cursor.fetchall()
        return [Job.from_row(row) for row in rows]

    async def mark_running(self, job_id: int) -> bool:
        """Claim a queued job; False if it is no longer queued (cancelled meanwhile)."""
        async with (
            self._store.transaction() as db,
            db.execute(
                "UPDATE jobs SET status = ?, started_at = ?, attempts = attempts + 1"
                " WHERE id = ? AND status = ?",
                (JobStatus.RUNNING, time.time(), job_id, JobStatus.QUEUED),
            ) as cursor,
        ):
            return cursor.rowcount == 1

    async def requeue(self, job_id: int) -> bool:
        """Put a job a crash left running back in the queue (its charge stands)."""
        async with (
            self._store.transaction() as db,
            db.execute(
                "UPDATE jobs SET status = ?, started_at = NULL WHERE id = ? AND status = ?",
                (JobStatus.QUEUED, job_id, JobStatus.RUNNING),
            ) as cursor,
        ):
            return cursor.rowcount == 1

    async def put_back(self, job_id: int) -> bool:
        """A running job stopped by a clean shutdown: queued again, and the interrupted run
        does not count as one of its attempts."""
        async with (
            self._store.transaction() as db,
            db.execute(
                "UPDATE jobs SET status = ?, started_at = NULL, attempts = MAX(attempts - 1, 0)"
                " WHERE id = ? AND status = ?",
                (JobStatus.QUEUED, job_id, JobStatus.RUNNING),
            ) as cursor,
        ):
            return cursor.rowcount == 1

    async def finish(self, job_id: int, status: JobStatus, *, error: str | None = None) -> int:
        """End a pending job; a failed or cancelled one is refunded in the same transaction.

        Returns the credits refunded. A job that already ended is left as it is (0).
        """
        if not status.finished:
            raise ValueError(f"{status} is not a final status")
        async with self._store.transaction() as db:
            async with db.execute(
                "UPDATE jobs SET status = ?, error = ?, finished_at = ?"
                " WHERE id = ? AND status IN (?, ?)",
                (status, error, time.time(), job_id, *PENDING),
            ) as cursor:
                if cursor.rowcount != 1:
                    return 0
            if status is JobStatus.SUCCEEDED:
                return 0
            return await credits.refund(db, job_id, reason=error or status.value)

    async def set_message(self, job_id: int, message_id: int) -> None:
        async with (
            self._store.transaction() as db,
            db.execute("UPDATE jobs SET message_id = ? WHERE id = ?", (message_id, job_id)),
        ):
            pass

    async def complete(self, job_id: int, images: list[JobImage]) -> bool:
        """Record a job's images and mark it succeeded, together or not at all.

        A job run again after a crash replaces what an earlier run recorded. False (and
        nothing written) when the job had already ended, e.g. cancelled meanwhile.
        """
        async with self._store.transaction() as db:
            async with db.execute(
                "UPDATE jobs SET status = ?, error = NULL, finished_at = ?"
                " WHERE id = ? AND status IN (?, ?)",
                (JobStatus.SUCCEEDED, time.time(), job_id, *PENDING),
            ) as cursor:
                if cursor.rowcount != 1:
                    return False
            async with db.execute("DELETE FROM images WHERE job_id = ?", (job_id,)):
                pass
            await db.executemany(
                "INSERT INTO images (job_id, idx, seed, path, width, height, infotext)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(i.job_id, i.idx, i.seed, i.path, i.width, i.height, i.infotext) for i in images],
            )
        return True

    async def pending_for(self, user_id: int) -> list[Job]:
        async with self._store.db.execute(
            "SELECT * FROM jobs WHERE user_id = ? AND status IN (?, ?) ORDER BY id",
            (user_id, *PENDING),
        ) as cursor:
            rows = await cursor.fetchall()
        return [Job.from_row(row) for row in rows]

    async def images(self, job_id: int) -> list[JobImage]:
        async with self._store.db.execute(
            "SELECT job_id, idx, seed, path, width, height, infotext FROM images"
            " WHERE job_id = ? ORDER BY idx",
            (job_id,),
        ) as cursor:
            rows = await cursor.fetchall()
        return [JobImage(**dict(row)) for row in rows]

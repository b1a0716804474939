"""Jobs and their output images: the repository that writes and reads them.

The records it returns are in data/job_records.py, and what refuses a job (duplicates, the
queue's caps) in data/job_admission.py; both are importable from here, as before.
"""

from __future__ import annotations

import json
import time
from typing import Any

import data.credits as credits
from data.credits import CreditPolicy
from data.job_admission import (
    DuplicateAction,
    DuplicateInteraction,
    QueueCaps,
    QueueFull,
    admit,
)
from data.job_records import PENDING, Job, JobImage, JobStatus, Origin
from data.store import Store

__all__ = [
    "PENDING",
    "DuplicateAction",
    "DuplicateInteraction",
    "Job",
    "JobImage",
    "JobRepository",
    "JobStatus",
    "Origin",
    "QueueCaps",
    "QueueFull",
]


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
            await admit(
                db, user_id=user_id, interaction_id=interaction_id, origin=origin, caps=caps
            )
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
        claimed = await self._store.write_one(
            "UPDATE jobs SET status = ?, started_at = ?, attempts = attempts + 1"
            " WHERE id = ? AND status = ?",
            (JobStatus.RUNNING, time.time(), job_id, JobStatus.QUEUED),
        )
        return claimed == 1

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

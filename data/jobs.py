"""Jobs and their output images."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiosqlite

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


class JobRepository:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(
        self,
        *,
        kind: str,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        interaction_id: int | None,
        params: dict[str, Any],
    ) -> Job:
        db = self._store.db
        try:
            async with db.execute(
                "INSERT INTO jobs (kind, status, user_id, guild_id, channel_id, interaction_id,"
                " params, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (
                    kind,
                    JobStatus.QUEUED,
                    user_id,
                    guild_id,
                    channel_id,
                    interaction_id,
                    json.dumps(params, ensure_ascii=False),
                    time.time(),
                ),
            ) as cursor:
                row = await cursor.fetchone()
        except sqlite3.IntegrityError:
            existing = await self.by_interaction(interaction_id) if interaction_id else None
            if existing is None:
                raise
            raise DuplicateInteraction(existing) from None
        assert row is not None
        return Job.from_row(row)

    async def get(self, job_id: int) -> Job | None:
        async with self._store.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return Job.from_row(row) if row else None

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

    async def mark_running(self, job_id: int) -> bool:
        """Claim a queued job; False if it is no longer queued (cancelled meanwhile)."""
        async with self._store.db.execute(
            "UPDATE jobs SET status = ?, started_at = ? WHERE id = ? AND status = ?",
            (JobStatus.RUNNING, time.time(), job_id, JobStatus.QUEUED),
        ) as cursor:
            return cursor.rowcount == 1

    async def finish(self, job_id: int, status: JobStatus, *, error: str | None = None) -> None:
        if not status.finished:
            raise ValueError(f"{status} is not a final status")
        async with self._store.db.execute(
            "UPDATE jobs SET status = ?, error = ?, finished_at = ? WHERE id = ?",
            (status, error, time.time(), job_id),
        ):
            pass

    async def set_message(self, job_id: int, message_id: int) -> None:
        async with self._store.db.execute(
            "UPDATE jobs SET message_id = ? WHERE id = ?", (message_id, job_id)
        ):
            pass

    async def add_images(self, images: list[JobImage]) -> None:
        db = self._store.db
        await db.execute("BEGIN")
        try:
            await db.executemany(
                "INSERT INTO images (job_id, idx, seed, path, width, height, infotext)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(i.job_id, i.idx, i.seed, i.path, i.width, i.height, i.infotext) for i in images],
            )
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        await db.execute("COMMIT")

    async def images(self, job_id: int) -> list[JobImage]:
        async with self._store.db.execute(
            "SELECT job_id, idx, seed, path, width, height, infotext FROM images"
            " WHERE job_id = ? ORDER BY idx",
            (job_id,),
        ) as cursor:
            rows = await cursor.fetchall()
        return [JobImage(**dict(row)) for row in rows]

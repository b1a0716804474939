"""What refuses a job before its row is written: a doubled interaction, a double click on
an action, a full queue. Checked inside the transaction that creates the job
(data/jobs.py `create`), so two requests cannot both pass a cap with room for one."""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

from data.job_records import PENDING, Job, JobStatus, Origin


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


class QueueFull(Exception):
    """A cap on queued jobs was reached; the message says which, for the member."""


@dataclass(frozen=True, slots=True)
class QueueCaps:
    per_member: int = 3  # queued or running, per member
    total: int = 100  # queued, everyone together


async def _count(db: aiosqlite.Connection, sql: str, args: tuple[object, ...]) -> int:
    async with db.execute(sql, args) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def admit(
    db: aiosqlite.Connection,
    *,
    user_id: int,
    interaction_id: int | None,
    origin: Origin | None,
    caps: QueueCaps | None,
) -> None:
    """Raise DuplicateInteraction, DuplicateAction or QueueFull when the job must not be
    created; reads only."""
    if interaction_id is not None:
        existing = await _by_interaction(db, interaction_id)
        if existing is not None:
            raise DuplicateInteraction(existing)
    if origin is not None:
        pending = await _pending_action(db, user_id, origin.key)
        if pending is not None:
            raise DuplicateAction(pending)
    if caps is not None:
        await _check_caps(db, user_id, caps)


async def _by_interaction(db: aiosqlite.Connection, interaction_id: int) -> Job | None:
    async with db.execute(
        "SELECT * FROM jobs WHERE interaction_id = ?", (interaction_id,)
    ) as cursor:
        row = await cursor.fetchone()
    return Job.from_row(row) if row else None


async def _pending_action(db: aiosqlite.Connection, user_id: int, key: str) -> Job | None:
    async with db.execute(
        "SELECT * FROM jobs WHERE user_id = ? AND action_key = ? AND status IN (?, ?)",
        (user_id, key, *PENDING),
    ) as cursor:
        row = await cursor.fetchone()
    return Job.from_row(row) if row else None


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

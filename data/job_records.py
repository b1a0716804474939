"""A job and its images as typed, frozen records: what the repositories return (read from
their rows) and take."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiosqlite


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


PENDING = (JobStatus.QUEUED, JobStatus.RUNNING)


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


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an action job comes from: the job whose result was clicked, and what was asked
    (`key` identifies the click, e.g. 'upscale:12:0', for double-click protection)."""

    parent_id: int | None  # None for a job made from nothing posted (a /train request)
    action: str
    key: str

"""What a server's admins read in /stats, the safety classifier's record, and the times
cooldowns are measured from: all read from the jobs table, the source of truth."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from data.store import Store

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class DayCount:
    day: str  # YYYY-MM-DD, UTC
    images: int


@dataclass(frozen=True, slots=True)
class MemberCount:
    user_id: int
    images: int


@dataclass(frozen=True, slots=True)
class GuildStats:
    days: list[DayCount]
    top_members: list[MemberCount]
    jobs: int
    failed: int
    cancelled: int
    average_wait: float | None  # seconds from accepted to started
    average_run: float | None  # seconds from started to finished
    flagged: int


class StatsRepository:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def last_job_at(
        self, user_id: int, guild_id: int | None, kind: str, *, except_interaction: int | None
    ) -> float | None:
        """When the member last started a job of this kind here (failed ones do not count:
        a member is not made to wait for the bot's own failure). A retried interaction's own
        job is left out."""
        async with self._store.db.execute(
            "SELECT MAX(created_at) FROM jobs WHERE user_id = ? AND guild_id IS ? AND kind = ?"
            " AND status IN ('queued', 'running', 'succeeded')"
            " AND (interaction_id IS NULL OR interaction_id IS NOT ?)",
            (user_id, guild_id, kind, except_interaction),
        ) as cursor:
            row = await cursor.fetchone()
        return row[0] if row and row[0] is not None else None

    async def record_flags(self, job_id: int, indices: list[int], action: str) -> None:
        async with self._store.transaction() as db:
            await db.executemany(
                "INSERT INTO flagged_images (job_id, idx, action, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (job_id, idx) DO UPDATE SET action = excluded.action",
                [(job_id, idx, action, time.time()) for idx in indices],
            )

    async def flags(self, job_id: int) -> dict[int, str]:
        async with self._store.db.execute(
            "SELECT idx, action FROM flagged_images WHERE job_id = ?", (job_id,)
        ) as cursor:
            return {row["idx"]: row["action"] for row in await cursor.fetchall()}

    async def guild_stats(
        self, guild_id: int, *, days: int = 7, top: int = 5, now: float | None = None
    ) -> GuildStats:
        since = (now or time.time()) - days * DAY
        args = (guild_id, since)
        per_day = await self._rows(
            "SELECT date(j.created_at, 'unixepoch') AS day, COUNT(i.id) AS images"
            " FROM jobs j JOIN images i ON i.job_id = j.id"
            " WHERE j.guild_id = ? AND j.created_at >= ? AND j.status = 'succeeded'"
            " GROUP BY day ORDER BY day",
            args,
        )
        members = await self._rows(
            "SELECT j.user_id, COUNT(i.id) AS images FROM jobs j JOIN images i ON i.job_id = j.id"
            " WHERE j.guild_id = ? AND j.created_at >= ? AND j.status = 'succeeded'"
            " GROUP BY j.user_id ORDER BY images DESC, j.user_id LIMIT ?",
            (*args, top),
        )
        [totals] = await self._rows(
            "SELECT COUNT(*) AS jobs,"
            " SUM(status = 'failed') AS failed, SUM(status = 'cancelled') AS cancelled,"
            " AVG(started_at - created_at) AS wait,"
            " AVG(CASE WHEN status = 'succeeded' THEN finished_at - started_at END) AS run"
            " FROM jobs WHERE guild_id = ? AND created_at >= ?",
            args,
        )
        [flagged] = await self._rows(
            "SELECT COUNT(*) AS flagged FROM flagged_images f JOIN jobs j ON j.id = f.job_id"
            " WHERE j.guild_id = ? AND j.created_at >= ?",
            args,
        )
        return GuildStats(
            days=[DayCount(row["day"], row["images"]) for row in per_day],
            top_members=[MemberCount(row["user_id"], row["images"]) for row in members],
            jobs=totals["jobs"],
            failed=totals["failed"] or 0,
            cancelled=totals["cancelled"] or 0,
            average_wait=totals["wait"],
            average_run=totals["run"],
            flagged=flagged["flagged"],
        )

    async def _rows(self, sql: str, args: tuple[object, ...]) -> list[dict[str, Any]]:
        async with self._store.db.execute(sql, args) as cursor:
            return [dict(row) for row in await cursor.fetchall()]

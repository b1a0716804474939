"""Per-server settings: raw key/value rows (bot/community/guilds.py gives them types and defaults),
the members a server has blocked, and its role limits."""

from __future__ import annotations

import time
from dataclasses import dataclass

from data.store import Store


@dataclass(frozen=True, slots=True)
class RoleLimits:
    """What a role changes for its members; None keeps the server's own value."""

    role_id: int
    max_steps: int | None = None
    max_pixels: int | None = None
    max_count: int | None = None
    max_pending: int | None = None
    price_factor: float | None = None


class GuildSettingsRepository:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def values(self, guild_id: int) -> dict[str, str]:
        async with self._store.db.execute(
            "SELECT key, value FROM guild_settings WHERE guild_id = ?", (guild_id,)
        ) as cursor:
            rows = await cursor.fetchall()
        return {row["key"]: row["value"] for row in rows}

    async def put(self, guild_id: int, key: str, value: str, *, by: int | None) -> None:
        async with self._store.transaction() as db:
            await db.execute(
                "INSERT INTO guild_settings (guild_id, key, value, updated_by, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (guild_id, key) DO UPDATE SET"
                " value = excluded.value, updated_by = excluded.updated_by,"
                " updated_at = excluded.updated_at",
                (guild_id, key, value, by, time.time()),
            )

    async def remove(self, guild_id: int, key: str) -> None:
        async with self._store.transaction() as db:
            await db.execute(
                "DELETE FROM guild_settings WHERE guild_id = ? AND key = ?", (guild_id, key)
            )

    # -- members a server has blocked ----------------------------------------------------

    async def block(self, guild_id: int, user_id: int, reason: str | None, *, by: int) -> bool:
        """False when the member was already blocked (the first reason stands)."""
        async with (
            self._store.transaction() as db,
            db.execute(
                "INSERT INTO guild_blocks (guild_id, user_id, reason, blocked_by, created_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (guild_id, user_id) DO NOTHING",
                (guild_id, user_id, reason, by, time.time()),
            ) as cursor,
        ):
            return cursor.rowcount == 1

    async def unblock(self, guild_id: int, user_id: int) -> bool:
        async with (
            self._store.transaction() as db,
            db.execute(
                "DELETE FROM guild_blocks WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
            ) as cursor,
        ):
            return cursor.rowcount == 1

    async def is_blocked(self, guild_id: int, user_id: int) -> bool:
        async with self._store.db.execute(
            "SELECT 1 FROM guild_blocks WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        ) as cursor:
            return await cursor.fetchone() is not None

    async def blocked(self, guild_id: int) -> list[int]:
        async with self._store.db.execute(
            "SELECT user_id FROM guild_blocks WHERE guild_id = ? ORDER BY created_at",
            (guild_id,),
        ) as cursor:
            return [row["user_id"] for row in await cursor.fetchall()]

    # -- role limits --------------------------------------------------------------------

    async def role_limits(self, guild_id: int) -> list[RoleLimits]:
        async with self._store.db.execute(
            "SELECT role_id, max_steps, max_pixels, max_count, max_pending, price_factor"
            " FROM role_limits WHERE guild_id = ? ORDER BY role_id",
            (guild_id,),
        ) as cursor:
            return [RoleLimits(**dict(row)) for row in await cursor.fetchall()]

    async def put_role_limits(self, guild_id: int, limits: RoleLimits, *, by: int) -> None:
        async with self._store.transaction() as db:
            await db.execute(
                "INSERT INTO role_limits (guild_id, role_id, max_steps, max_pixels, max_count,"
                " max_pending, price_factor, updated_by, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id, role_id) DO UPDATE SET"
                " max_steps = excluded.max_steps, max_pixels = excluded.max_pixels,"
                " max_count = excluded.max_count, max_pending = excluded.max_pending,"
                " price_factor = excluded.price_factor, updated_by = excluded.updated_by,"
                " updated_at = excluded.updated_at",
                (
                    guild_id,
                    limits.role_id,
                    limits.max_steps,
                    limits.max_pixels,
                    limits.max_count,
                    limits.max_pending,
                    limits.price_factor,
                    by,
                    time.time(),
                ),
            )

    async def remove_role_limits(self, guild_id: int, role_id: int) -> bool:
        async with (
            self._store.transaction() as db,
            db.execute(
                "DELETE FROM role_limits WHERE guild_id = ? AND role_id = ?", (guild_id, role_id)
            ) as cursor,
        ):
            return cursor.rowcount == 1

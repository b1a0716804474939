"""Per-server settings: raw key/value rows. bot/guilds.py gives them types and defaults."""

from __future__ import annotations

import time

from data.store import Store


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

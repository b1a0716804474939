"""Members' own defaults and named presets: JSON of the options each one sets."""

from __future__ import annotations

import json
import time
from typing import Any

from data.store import Store

# The name under which a member's own defaults are kept (preset names are never empty).
DEFAULTS = ""


class MemberPresetRepository:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, user_id: int, name: str = DEFAULTS) -> dict[str, Any] | None:
        async with self._store.db.execute(
            "SELECT options FROM member_presets WHERE user_id = ? AND name = ?", (user_id, name)
        ) as cursor:
            row = await cursor.fetchone()
        return json.loads(row["options"]) if row else None

    async def names(self, user_id: int) -> list[str]:
        """The member's preset names, without their defaults."""
        async with self._store.db.execute(
            "SELECT name FROM member_presets WHERE user_id = ? AND name != ? ORDER BY name",
            (user_id, DEFAULTS),
        ) as cursor:
            return [row["name"] for row in await cursor.fetchall()]

    async def put(
        self, user_id: int, name: str, options: dict[str, Any], *, max_presets: int | None = None
    ) -> bool:
        """Save; False (nothing saved) when it is a new preset and the member has
        `max_presets` already. Counted in the same transaction, so two saves cannot both
        slip under the limit."""
        async with self._store.transaction() as db:
            if max_presets is not None and name != DEFAULTS:
                async with db.execute(
                    "SELECT COUNT(*) FROM member_presets WHERE user_id = ? AND name != ?"
                    " AND name != ?",
                    (user_id, DEFAULTS, name),
                ) as cursor:
                    row = await cursor.fetchone()
                if row is not None and row[0] >= max_presets:
                    exists = await self._exists(db, user_id, name)
                    if not exists:
                        return False
            await db.execute(
                "INSERT INTO member_presets (user_id, name, options, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, name) DO UPDATE SET"
                " options = excluded.options, updated_at = excluded.updated_at",
                (user_id, name, json.dumps(options, ensure_ascii=False), time.time()),
            )
        return True

    @staticmethod
    async def _exists(db: Any, user_id: int, name: str) -> bool:
        async with db.execute(
            "SELECT 1 FROM member_presets WHERE user_id = ? AND name = ?", (user_id, name)
        ) as cursor:
            return await cursor.fetchone() is not None

    async def remove(self, user_id: int, name: str = DEFAULTS) -> bool:
        async with (
            self._store.transaction() as db,
            db.execute(
                "DELETE FROM member_presets WHERE user_id = ? AND name = ?", (user_id, name)
            ) as cursor,
        ):
            return cursor.rowcount == 1

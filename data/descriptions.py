"""/describe's four prompts for a picture, kept so that the buttons under them (which carry
only the row's id) run them after any restart. The picture itself is not kept."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import aiosqlite

from data.store import Store


@dataclass(frozen=True, slots=True)
class Description:
    """Who asked where (the same fields a job's buttons are judged by), and the prompts."""

    id: int
    user_id: int
    guild_id: int | None
    channel_id: int | None
    private: bool
    prompts: tuple[str, ...]
    created_at: float

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Description:
        return cls(
            id=row["id"],
            user_id=row["user_id"],
            guild_id=row["guild_id"],
            channel_id=row["channel_id"],
            private=bool(row["private"]),
            prompts=tuple(str(prompt) for prompt in json.loads(row["prompts"])),
            created_at=row["created_at"],
        )


class DescriptionRepository:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def add(
        self,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        private: bool,
        prompts: list[str],
    ) -> Description:
        async with (
            self._store.transaction() as db,
            db.execute(
                "INSERT INTO descriptions (user_id, guild_id, channel_id, private, prompts,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
                (user_id, guild_id, channel_id, int(private), json.dumps(prompts), time.time()),
            ) as cursor,
        ):
            row = await cursor.fetchone()
        assert row is not None
        return Description.from_row(row)

    async def get(self, description_id: int) -> Description | None:
        async with self._store.db.execute(
            "SELECT * FROM descriptions WHERE id = ?", (description_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return Description.from_row(row) if row else None

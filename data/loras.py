"""LoRAs and embeddings members trained, and who may use them."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import aiosqlite

from data.store import Store


class DuplicateName(Exception):
    """The owner already has one of that name."""


@dataclass(frozen=True, slots=True)
class Lora:
    id: int
    owner_id: int
    guild_id: int | None
    name: str
    method: str
    token: str
    class_word: str
    base_model: str
    path: str
    shared: bool
    job_id: int | None
    metadata: dict[str, Any]
    created_at: float

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Lora:
        return cls(
            id=row["id"],
            owner_id=row["owner_id"],
            guild_id=row["guild_id"],
            name=row["name"],
            method=row["method"],
            token=row["token"],
            class_word=row["class_word"],
            base_model=row["base_model"],
            path=row["path"],
            shared=bool(row["shared"]),
            job_id=row["job_id"],
            metadata=json.loads(row["metadata"]),
            created_at=row["created_at"],
        )


class LoraRepository:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def add(
        self,
        *,
        owner_id: int,
        guild_id: int | None,
        name: str,
        method: str,
        token: str,
        class_word: str,
        base_model: str,
        path: str,
        job_id: int | None,
        metadata: dict[str, Any],
    ) -> Lora:
        try:
            async with (
                self._store.transaction() as db,
                db.execute(
                    "INSERT INTO loras (owner_id, guild_id, name, method, token, class_word,"
                    " base_model, path, job_id, metadata, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                    (
                        owner_id,
                        guild_id,
                        name,
                        method,
                        token,
                        class_word,
                        base_model,
                        path,
                        job_id,
                        json.dumps(metadata),
                        time.time(),
                    ),
                ) as cursor,
            ):
                row = await cursor.fetchone()
        except sqlite3.IntegrityError:
            raise DuplicateName(name) from None
        assert row is not None
        return Lora.from_row(row)

    async def by_job(self, job_id: int) -> Lora | None:
        async with self._store.db.execute(
            "SELECT * FROM loras WHERE job_id = ?", (job_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return Lora.from_row(row) if row else None

    async def owned(self, owner_id: int, name: str) -> Lora | None:
        async with self._store.db.execute(
            "SELECT * FROM loras WHERE owner_id = ? AND name = ?", (owner_id, name)
        ) as cursor:
            row = await cursor.fetchone()
        return Lora.from_row(row) if row else None

    async def usable(self, user_id: int, guild_id: int | None) -> list[Lora]:
        """The member's own, then those shared in this guild, each group by name."""
        async with self._store.db.execute(
            "SELECT * FROM loras WHERE owner_id = ? OR (shared = 1 AND guild_id IS ?)"
            " ORDER BY owner_id != ?, name, id",
            (user_id, guild_id, user_id),
        ) as cursor:
            rows = await cursor.fetchall()
        return [Lora.from_row(row) for row in rows]

    async def rename(self, lora_id: int, name: str) -> None:
        try:
            async with self._store.transaction() as db:
                await db.execute("UPDATE loras SET name = ? WHERE id = ?", (name, lora_id))
        except sqlite3.IntegrityError:
            raise DuplicateName(name) from None

    async def set_shared(self, lora_id: int, shared: bool, guild_id: int) -> None:
        async with self._store.transaction() as db:
            await db.execute(
                "UPDATE loras SET shared = ?, guild_id = ? WHERE id = ?",
                (int(shared), guild_id, lora_id),
            )

    async def delete(self, lora_id: int) -> None:
        async with self._store.transaction() as db:
            await db.execute("DELETE FROM loras WHERE id = ?", (lora_id,))

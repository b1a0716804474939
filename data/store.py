"""Opening and migrating the database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import Self

import aiosqlite

log = logging.getLogger(__name__)

# A write first waits `busy_timeout` (5 s) for another connection's write lock (a `sqlite3`
# shell, a backup script that locks the file, a second process), then tries again after each
# of these pauses: a lock held for a quarter of a minute is ridden out, and between tries the
# connection's thread serves the reads that queued up behind the wait.
BUSY_RETRY_PAUSES = (0.1, 0.5, 1.0)
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


class StoreBusy(sqlite3.OperationalError):
    """Another connection held the database's write lock through every try; nothing was
    written, so the caller may try again later."""


class StoreClosed(RuntimeError):
    """The store was used after `close()` (or after its `async with` block ended)."""


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every `NNNN_name.sql` shipped in data/migrations, in order."""
    found = []
    for entry in resources.files("data").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


class Store:
    """Owns the one connection. Repositories borrow it; nothing else opens the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._closed = False
        # One connection serves every coroutine, so two transactions would interleave their
        # statements. Every write runs inside `transaction()`, one at a time.
        self._write_lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block raises (or is cancelled)."""
        async with self._write_lock:
            db = self.db
            await self._begin(db)
            try:
                yield db
            except BaseException:
                await asyncio.shield(db.execute("ROLLBACK"))
                raise
            await db.execute("COMMIT")

    async def write_one(self, sql: str, parameters: tuple[object, ...]) -> int:
        """One statement in a transaction of its own (SQLite makes a lone statement atomic),
        in one hop to the database thread instead of BEGIN, the statement and COMMIT: for
        the claim on the path between two batches. Its row count; StoreBusy as for
        `transaction`, tried again only while nothing was written."""
        async with self._write_lock:
            pauses = iter(BUSY_RETRY_PAUSES)
            while True:
                try:
                    async with self.db.execute(sql, parameters) as cursor:
                        return cursor.rowcount
                except sqlite3.OperationalError as error:
                    await self._wait_out_lock(error, pauses)

    async def _begin(self, db: aiosqlite.Connection) -> None:
        """BEGIN IMMEDIATE, tried again while another connection holds the write lock.

        Only BEGIN can meet a lock held elsewhere: once it succeeds this connection holds
        the write lock (in WAL mode readers never block it), so a retry here can repeat
        nothing half done. StoreBusy when the lock outlasts every try.
        """
        pauses = iter(BUSY_RETRY_PAUSES)
        while True:
            try:
                await db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                await self._wait_out_lock(error, pauses)

    @staticmethod
    async def _wait_out_lock(error: sqlite3.OperationalError, pauses: Iterator[float]) -> None:
        """A pause before trying again while another connection holds the write lock;
        `error` again when it is not that, StoreBusy when the pauses are used up."""
        if getattr(error, "sqlite_errorcode", None) not in _BUSY_CODES:
            raise error
        pause = next(pauses, None)
        if pause is None:
            raise StoreBusy(
                f"the database stayed locked by another connection ({error})"
            ) from error
        log.warning("database locked by another connection; trying again in %ss", pause)
        await asyncio.sleep(pause)

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            if self._closed:
                raise StoreClosed(f"the store at {self.path.name} was closed; open it again")
            raise RuntimeError("Store.open() has not been awaited")
        return self._db

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self.path != Path(":memory:"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        self._closed = False
        self._db.row_factory = aiosqlite.Row
        # A cursor left open keeps its statement in progress and blocks COMMIT: close each.
        for pragma in ("journal_mode = WAL", "foreign_keys = ON", "busy_timeout = 5000"):
            async with self._db.execute(f"PRAGMA {pragma}"):
                pass
        await self.migrate()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None
            self._closed = True

    async def schema_version(self) -> int:
        async with self.db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def migrate(self) -> None:
        """Apply every migration newer than the database, each in its own transaction."""
        current = await self.schema_version()
        for version, name, sql in _migrations():
            if version <= current:
                continue
            log.info("applying migration %s", name)
            # executescript commits first, so the script carries its own transaction and
            # sets user_version inside it: a crash leaves the old version, never half of one.
            await self.db.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;"
            )

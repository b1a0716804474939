"""A copy of the live database, made while the bot keeps running.

Copying the file with `cp` can catch it halfway through a checkpoint and misses whatever is
still in the `-wal` file. SQLite's online backup API reads every page inside one read
transaction instead: in WAL mode the bot keeps writing meanwhile, and the copy is the
database as it was at one moment.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import aiosqlite

from data.store import Store


async def backup(store: Store, target: Path) -> int:
    """Write a consistent copy of the store's database to `target`; returns its size.

    The copy is made under a temporary name beside `target` and renamed over it at the
    end, so a failed or interrupted backup never leaves half a file where the last good
    one was. The caller makes sure `target` is not the live database.
    """
    partial = await asyncio.to_thread(_partial_beside, target)
    try:
        async with aiosqlite.connect(partial) as copy:
            # pages=0 copies everything in one step: copied step by step, a backup starts
            # over each time the bot writes, and a busy bot could keep it from ever ending.
            await store.db.backup(copy, pages=0)
            # One self-contained file, whatever journal mode the live database uses.
            async with copy.execute("PRAGMA journal_mode = DELETE"):
                pass
        return await asyncio.to_thread(_move_into_place, partial, target)
    except BaseException:
        await asyncio.shield(asyncio.to_thread(partial.unlink, missing_ok=True))
        raise


def _partial_beside(target: Path) -> Path:
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(handle)
    return Path(name)


def _move_into_place(partial: Path, target: Path) -> int:
    os.replace(partial, target)
    return target.stat().st_size

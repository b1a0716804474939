"""Console commands on the books: `credits grant|show`, `db check` and `db backup`.

No torch imported: they run beside a live bot, from cron or by hand, in a blink.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import time
from pathlib import Path

from bot.credits import CreditService, CreditsRefused
from bot.settings import Settings
from data.backup import backup
from data.credits import CreditRepository
from data.store import Store

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def books(settings: Settings, args: argparse.Namespace) -> int:
    """`credits grant|show`, `db check` and `db backup`, straight on the database."""
    return asyncio.run(_books(settings, args))


async def _books(settings: Settings, args: argparse.Namespace) -> int:
    backing_up = args.command == "db" and args.action == "backup"
    if backing_up:
        # Checked before the store is opened: opening creates a database that is not there.
        refusal = backup_refusal(Path(args.path), settings.db_path)
        if refusal is not None:
            print(f"error: {refusal}", file=sys.stderr)
            return EXIT_BAD_INPUT
    store = Store(settings.db_path)
    # open() inside the try: a connection left open by a failed migration would keep the
    # process from ever exiting.
    try:
        try:
            await store.open()
        except (sqlite3.Error, OSError) as error:
            print(f"error: cannot open the database {settings.db_path}: {error}", file=sys.stderr)
            return EXIT_FAILED
        if backing_up:
            return await _backup(store, Path(args.path))
        service = CreditService(CreditRepository(store, settings.credit_policy()), 1)
        if args.command == "db":
            problems = await service.check()
            for problem in problems:
                print(problem)
            if not problems:
                print("OK")
            return EXIT_FAILED if problems else 0
        if args.action == "grant":
            try:
                account = await service.grant(
                    args.user_id, args.amount, is_bot=False, actor_id=None, reason=args.reason
                )
            except CreditsRefused as refused:
                print(f"error: {refused}", file=sys.stderr)
                return EXIT_BAD_INPUT
            print(f"user {args.user_id}: balance {account.balance}")
            return 0
        report = await service.balance(args.user_id)
        print(f"user {args.user_id}: balance {report.account.balance}")
        for entry in await service.history(args.user_id, limit=20):
            job = f" job {entry.job_id}" if entry.job_id else ""
            reason = f" ({entry.reason})" if entry.reason else ""
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.created_at))
            print(f"  {when} {entry.delta:+d} {entry.kind.value}{job}{reason}")
        return 0
    finally:
        await store.close()


def backup_refusal(target: Path, live: Path) -> str | None:
    """Why `db backup` must not write to `target`, as one sentence; None when it may."""
    if target.is_dir():
        return f"{target} is a folder: give the backup's file name, e.g. {target / 'bot.sqlite3'}"
    if not target.parent.is_dir():
        return f"{target.parent} does not exist: create the folder first"
    if _is_live(target, live):
        return f"{target} is the live database: back it up to another file"
    if not live.is_file():
        return f"there is no database at {live} to back up (see SDBOT_DATA_DIR)"
    return None


def _is_live(target: Path, live: Path) -> bool:
    """The live database or one of SQLite's files beside it, by any name or link."""
    resolved = live.resolve()
    names = [resolved] + [resolved.with_name(resolved.name + end) for end in ("-wal", "-shm")]
    if target.resolve() in names:
        return True
    try:
        return any(os.path.samefile(target, name) for name in names if name.exists())
    except OSError:  # target does not exist: it is no other file
        return False


async def _backup(store: Store, target: Path) -> int:
    try:
        size = await backup(store, target)
    except (sqlite3.Error, OSError) as error:
        print(f"error: backup to {target} failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"backup written to {target} ({size} bytes)")
    return 0

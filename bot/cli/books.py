"""Console commands on the books: `credits grant|set|show`, `db check` and `db backup`.

No torch imported: they run beside a live bot, from cron or by hand, in a blink. The ones
that read (`credits show`, `db check`) write nothing: no account is opened for a member
they look up, and no database is made where there is none.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import time
from pathlib import Path

from bot.community.credits import MAX_AMOUNT, CreditService, CreditsRefused
from bot.settings import Settings
from data.backup import backup
from data.credits import CreditRepository
from data.store import Store

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def books(settings: Settings, args: argparse.Namespace) -> int:
    """`credits grant|set|show`, `db check` and `db backup`, straight on the database."""
    return asyncio.run(_books(settings, args))


async def _books(settings: Settings, args: argparse.Namespace) -> int:
    backing_up = args.command == "db" and args.action == "backup"
    if backing_up:
        # Checked before the store is opened: opening creates a database that is not there.
        refusal = backup_refusal(Path(args.path), settings.db_path)
        if refusal is not None:
            print(f"error: {refusal}", file=sys.stderr)
            return EXIT_BAD_INPUT
    refusal = _amount_refusal(args) or _open_refusal(
        settings, reads_only=args.command == "db" or args.action == "show"
    )
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
        if args.action in ("grant", "set"):
            return await _adjust(service, args)
        return await _show(service, args.user_id)
    finally:
        await store.close()


def _open_refusal(settings: Settings, *, reads_only: bool) -> str | None:
    """Why the database cannot be opened, as one sentence naming the setting; None when it
    can. A read of a database that is not there would make an empty one and report it."""
    path = settings.db_path
    setting = "SDBOT_DATABASE_PATH" if settings.database_path else "SDBOT_DATA_DIR"
    if reads_only:
        if path.is_file():
            return None
        return (
            f"there is no database at {path}: run this where the bot runs, or set {setting} "
            "to where its database is"
        )
    from bot.cli.checks.storage import folder_finding

    found = folder_finding(setting, path.parent)
    return None if found.ok else found.problem()


def _amount_refusal(args: argparse.Namespace) -> str | None:
    """The service refuses these too, but only once the database is open (and made, if it
    was not there): a typo must write nothing."""
    if args.command != "credits" or args.action not in ("grant", "set"):
        return None
    if args.action == "grant" and args.amount <= 0:
        # The service's own refusal speaks of Discord's /credits set.
        return (
            "grant a positive number of credits; to lower a balance: python -m bot credits set "
            f"{args.user_id} AMOUNT"
        )
    if args.amount < 0:
        return "a balance cannot be negative"
    if args.amount > MAX_AMOUNT:
        return f"{args.amount:,} credits is more than the limit of {MAX_AMOUNT:,}"
    return None


async def _adjust(service: CreditService, args: argparse.Namespace) -> int:
    change = service.grant if args.action == "grant" else service.set_balance
    try:
        account = await change(
            args.user_id, args.amount, is_bot=False, actor_id=None, reason=args.reason
        )
    except CreditsRefused as refused:
        print(f"error: {refused}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"user {args.user_id}: balance {account.balance}")
    return 0


async def _show(service: CreditService, user_id: int) -> int:
    """The balance as it stands and the last ledger rows. The service's balance() opens an
    account (with its welcome grant) or gives a top-up that is due: the member's next
    command does that, not the owner's look."""
    if not await service.credits.has_account(user_id):
        print(f"user {user_id}: no account yet (their first command opens one)")
        return 0
    print(f"user {user_id}: balance {await service.credits.balance(user_id)}")
    for entry in await service.credits.history(user_id, limit=20):
        job = f" job {entry.job_id}" if entry.job_id else ""
        reason = f" ({entry.reason})" if entry.reason else ""
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.created_at))
        print(f"  {when} {entry.delta:+d} {entry.kind.value}{job}{reason}")
    return 0


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

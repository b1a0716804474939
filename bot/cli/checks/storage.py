"""Storage: the data folder and the database's folder can be written, the disk has room,
and the database passes SQLite's integrity check and the books' (`db check`).

The database is opened read-only: a database an older bot wrote is reported, not migrated.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from pathlib import Path

from bot.cli.checks.findings import GIB, Finding, failed, passed
from bot.settings import Settings

# Below this a day of images (a few hundred PNGs of ~0.5 MB) or a database that grows can
# fill the disk, and SQLite fails writes with "database or disk is full".
MIN_FREE_DISK = 1 * GIB


# -- folders and disk --------------------------------------------------------------------


def folder_finding(subject: str, folder: Path) -> Finding:
    """Whether `folder` can be written, without creating it: the nearest folder that exists
    on its way must let us create a file, or it would fail at the first image saved."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "a file" if existing == folder else f"a file, so {folder} cannot be a folder"
        return failed(
            subject, f"{existing} is {where}", f"set {subject} to a folder that can be written"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return failed(
            subject,
            f"{folder} cannot be written ({error.strerror or error})",
            f"let this user write to {existing}, or set {subject} to a folder that can be written",
        )
    shown = "" if existing == folder else " (created at first start)"
    return passed(subject, f"{folder} can be written{shown}")


def disk_finding(folder: Path) -> Finding:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError as error:
        return failed("disk", f"free space unknown ({error})", "check the data folder's disk")
    detail = f"{free / GIB:.1f} GiB free for {folder}"
    if free < MIN_FREE_DISK:
        return failed(
            "disk", detail, "free some space, or set SDBOT_RETENTION_DAYS or SDBOT_RETENTION_MAX_GB"
        )
    return passed("disk", detail)


# -- the database ------------------------------------------------------------------------


def database_findings(settings: Settings) -> list[Finding]:
    """SQLite's own integrity check and the books' (`db check`), read-only: a database an
    older bot wrote is reported, not migrated."""
    path = settings.db_path
    subject = "database"
    if not path.exists():
        return [passed(subject, f"none yet at {path}: the bot creates it at first start")]
    restore = "stop the bot and restore the latest backup (python -m bot db backup makes them)"
    try:
        with sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True) as db:
            rows = db.execute("PRAGMA integrity_check").fetchall()
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as error:
        return [failed(subject, f"{path} cannot be read ({error})", restore)]
    if rows != [("ok",)]:
        return [failed(subject, f"{path} is damaged (integrity_check: {rows[0][0]})", restore)]
    from data.store import _migrations

    latest = max((number for number, _, _ in _migrations()), default=0)
    findings = [passed(subject, f"{path} passes SQLite's integrity check")]
    if version < latest:
        findings.append(
            passed("books", f"not checked: the bot upgrades the database to {latest} at start")
        )
        return findings
    findings.append(asyncio.run(_books_finding(settings)))
    return findings


async def _books_finding(settings: Settings) -> Finding:
    from bot.community.credits import CreditService
    from data.credits import CreditRepository
    from data.store import Store

    store = Store(settings.db_path)
    try:
        await store.open()
        problems = await CreditService(CreditRepository(store, settings.credit_policy()), 1).check()
    except sqlite3.Error as error:
        return failed("books", f"could not be checked ({error})", "python -m bot db check")
    finally:
        await store.close()
    if problems:
        return failed(
            "books",
            f"{len(problems)} problem(s), the first: {problems[0]}",
            "python -m bot db check lists them all",
        )
    return passed("books", "the ledger, the balances and the jobs agree (db check)")

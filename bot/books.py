"""Console commands on the books: `credits grant|show` and `db check`. No torch imported."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from bot.credits import CreditService, CreditsRefused
from bot.settings import Settings
from data.credits import CreditRepository
from data.store import Store

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def books(settings: Settings, args: argparse.Namespace) -> int:
    """`credits grant|show` and `db check`, straight on the database."""
    return asyncio.run(_books(settings, args))


async def _books(settings: Settings, args: argparse.Namespace) -> int:
    store = Store(settings.db_path)
    await store.open()
    try:
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

"""`python -m bot` starts the bot; `dream` and `selftest` use the engine without Discord."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from bot.settings import ENV_PREFIX, Settings

EXIT_CONFIG = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="start the Discord bot (the default)")
    commands.add_parser("selftest", help="check the install with a tiny model, no download")
    dream = commands.add_parser("dream", help="generate images without Discord")
    dream.add_argument("prompt")
    dream.add_argument("--negative", default=None)
    dream.add_argument("--model", default=None, help="a configured name, a folder or a file")
    dream.add_argument("--seed", type=int, default=None)
    dream.add_argument("--steps", type=int, default=None)
    dream.add_argument("--cfg", type=float, default=None)
    dream.add_argument("--size", default=None, help="WIDTHxHEIGHT")
    dream.add_argument("--sampler", default=None)
    dream.add_argument("--count", type=int, default=None)
    dream.add_argument("--clip-skip", type=int, default=None)
    dream.add_argument("--syntax", choices=["a1111", "subprompt", "auto"], default=None)
    dream.add_argument("--variation-seed", type=int, default=None)
    dream.add_argument("--variation-strength", type=float, default=None)
    dream.add_argument("--out", default=None, help="folder for the PNGs (default: DATA_DIR/out)")
    credits = commands.add_parser("credits", help="members' credits").add_subparsers(
        dest="action", required=True
    )
    grant = credits.add_parser("grant", help="give a member credits")
    grant.add_argument("user_id", type=int)
    grant.add_argument("amount", type=int)
    grant.add_argument("--reason", default="granted from the console")
    credits.add_parser("show", help="a member's balance and history").add_argument(
        "user_id", type=int
    )
    db = commands.add_parser("db", help="the database").add_subparsers(dest="action", required=True)
    db.add_parser("check", help="ledger equals balances, no job charged twice, ...")
    db.add_parser(
        "backup", help="a consistent copy of the database, safe while the bot runs"
    ).add_argument("path", help="the backup file to write (replaced if it exists)")
    return parser.parse_args(argv)


def load_settings() -> Settings | None:
    try:
        return Settings()
    except ValidationError as error:
        for problem in error.errors():
            where = ENV_PREFIX + "_".join(str(part) for part in problem["loc"]).upper()
            print(f"Setting {where}: {problem['msg']} (see .env.example)", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings()
    if settings is None:
        return EXIT_CONFIG
    starts_bot = args.command in (None, "run")
    # Checked before anything imports torch and diffusers: a mistake is told in a blink.
    if starts_bot and settings.discord_token is None:
        print(
            f"{ENV_PREFIX}DISCORD_TOKEN is not set: copy .env.example to .env and put the bot's "
            "token there.",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    from bot.logs import configure_logging

    configure_logging(settings.log_level, quiet_ml=args.command not in ("credits", "db"))
    if args.command == "selftest":
        from bot.cli import selftest

        return selftest(settings)
    if args.command == "dream":
        from bot.cli import dream

        return dream(settings, args)
    if args.command in ("credits", "db"):
        from bot.books import books

        return books(settings, args)
    from bot.runner import run_bot

    return run_bot(settings)


if __name__ == "__main__":
    sys.exit(main())

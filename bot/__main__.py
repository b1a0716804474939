"""`python -m bot` starts the bot; `dream` and `selftest` use the engine without Discord,
`doctor` checks the set-up, `credits` and `db` work on the books.

One rule for every set-up mistake: one line naming the setting (or file) and the fix, exit
status 2, the traceback only at SDBOT_LOG_LEVEL=DEBUG. Arguments and settings are checked
before torch and diffusers are imported, so a mistake is told in a blink.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError

from bot.settings import ENV_PREFIX, Settings, debugging, explain_settings_error

EXIT_CONFIG = 2
# The families engine/pipelines/tiny.py and tiny_families.py build (SD 2.x has no tiny one).
SELFTEST_FAMILIES = ("sd1", "sdxl", "sd3", "flux", "flux-schnell")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="start the Discord bot (the default)")
    selftest = commands.add_parser(
        "selftest", help="check the install with a tiny model, no download"
    )
    selftest.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="keep the tiny model in this new folder (a --model for dream, no download)",
    )
    selftest.add_argument(
        "--family",
        choices=SELFTEST_FAMILIES,
        default="sd1",
        help="the kind of tiny model: " + ", ".join(SELFTEST_FAMILIES) + " (default sd1)",
    )
    commands.add_parser("doctor", help="check the set-up, one line per check (no network)")
    worker = commands.add_parser(
        "worker", help="serve the bot's jobs on this machine's GPU (needs SDBOT_QUEUE_URL)"
    )
    worker.add_argument("--name", default=None, help="how /workers shows it (host-pid)")
    dream = commands.add_parser("dream", help="generate images without Discord")
    dream.add_argument("prompt")
    dream.add_argument("--negative", default=None)
    dream.add_argument("--model", default=None, help="a configured name, a folder or a file")
    dream.add_argument(
        "--config",
        default=None,
        help="for a .safetensors/.ckpt file: a diffusers folder (or cached Hub id) of the same "
        "family, whose configuration it loads with (needed offline)",
    )
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
    adjust = credits.add_parser("set", help="set a member's balance (a ledger row says so)")
    adjust.add_argument("user_id", type=int)
    adjust.add_argument("amount", type=int)
    adjust.add_argument("--reason", default="set from the console")
    show = credits.add_parser("show", help="a member's balance and history (changes nothing)")
    show.add_argument("user_id", type=int)
    db = commands.add_parser("db", help="the database").add_subparsers(dest="action", required=True)
    db.add_parser("check", help="ledger equals balances, no job charged twice, ...")
    db.add_parser(
        "backup", help="a consistent copy of the database, safe while the bot runs"
    ).add_argument("path", help="the backup file to write (replaced if it exists)")
    return parser.parse_args(argv)


def load_settings() -> Settings | None:
    """The settings, or None once each bad one is told on a line of its own."""
    try:
        return Settings()
    except (ValidationError, SettingsError) as error:
        for line in explain_settings_error(error):
            print(line, file=sys.stderr)
        if debugging():
            traceback.print_exception(error)
        return None


def refuse_to_start(settings: Settings) -> bool:
    """The start checks (bot/cli/doctor.py), told one line each; True when any failed."""
    from bot.cli.doctor import startup_problems

    problems = startup_problems(settings)
    for problem in problems:
        print(problem.problem(), file=sys.stderr)
    return bool(problems)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings()
    if settings is None:
        return EXIT_CONFIG
    starts_bot = args.command in (None, "run")
    if starts_bot and settings.discord_token is None:
        print(
            f"{ENV_PREFIX}DISCORD_TOKEN is not set: copy .env.example to .env and put the bot's "
            "token there.",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    from bot.logs import configure_logging
    from engine.worker import quiet_libraries

    # diffusers and transformers are muted by each command once its own checks have passed:
    # importing them takes seconds.
    configure_logging(settings.log_level, quiet_ml=False)
    if args.command == "doctor":
        from bot.cli.doctor import doctor

        quiet_libraries()  # the doctor imports them anyway: a broken install shows there
        return doctor(settings)
    if args.command == "selftest":
        from bot.cli.console import selftest

        return selftest(settings, args.save, args.family)
    if args.command == "dream":
        from bot.cli.console import dream

        return dream(settings, args)
    if args.command == "worker":
        if settings.queue_url is None:
            print(
                f"{ENV_PREFIX}QUEUE_URL is not set: give the worker the same Redis URL as the "
                "bot (README, Adding a GPU machine)",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        if refuse_to_start(settings):
            return EXIT_CONFIG
        from bot.cli.console import worker

        return worker(settings, args.name)
    if args.command in ("credits", "db"):
        from bot.cli.books import books

        return books(settings, args)
    # Before logging in to Discord: a member should never be the first to meet these.
    if refuse_to_start(settings):
        return EXIT_CONFIG
    quiet_libraries()
    from bot.client.runner import run_bot

    return run_bot(settings)


if __name__ == "__main__":
    sys.exit(main())

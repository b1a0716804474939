"""Building the bot from settings and running it until it is stopped."""

from __future__ import annotations

import asyncio
import logging
import sys

import aiohttp
import discord

from bot.client.app import SDBot
from bot.community.credits import CreditService
from bot.community.guilds import GuildSettingsService
from bot.community.policy import CommunityPolicy
from bot.community.prefs import PreferenceService
from bot.community.safety import SafetyReview
from bot.generation.actions import ResultActions
from bot.generation.imaging import ImageRequests
from bot.generation.options import STANDARD_JOB
from bot.generation.service import DreamService
from bot.jobs.inputs import InputStore
from bot.jobs.queue import JobQueue
from bot.settings import Settings
from bot.training.service import TrainingService
from data.credits import CreditRepository
from data.guilds import GuildSettingsRepository
from data.jobs import JobRepository
from data.loras import LoraRepository
from data.members import MemberPresetRepository
from data.stats import StatsRepository
from data.store import Store
from engine.api.specs import ModelSpec
from engine.worker import EngineConfig, EngineWorker

log = logging.getLogger(__name__)


def build_engine(settings: Settings, models: dict[str, ModelSpec] | None = None) -> EngineWorker:
    return EngineWorker(
        EngineConfig(
            models=models if models is not None else settings.model_specs(),
            device=settings.device,
            dtype=settings.dtype,
            preview_interval=settings.progress_interval,
            noise=settings.noise,
            upscaler=settings.upscaler,
            upscale_tile=settings.upscale_tile,
            upscale_tile_overlap=settings.upscale_tile_overlap,
        )
    )


def build_bot(settings: Settings, engine: EngineWorker | None = None) -> SDBot:
    """Everything the bot depends on, built here and passed down; nothing is started yet."""
    store = Store(settings.db_path)
    policy = settings.credit_policy()
    dreams = DreamService(
        settings,
        JobRepository(store, policy),
        CreditRepository(store, policy),
        engine or build_engine(settings),
        JobQueue(max_batch=settings.max_batch),
        InputStore(settings.inputs_dir),
    )
    credits = CreditService(dreams.credits, dreams.price(STANDARD_JOB))
    guilds = GuildSettingsService(settings, GuildSettingsRepository(store))
    actions = ResultActions(dreams, guilds)
    # A server's rules and the safety review apply to every job the service accepts.
    stats = StatsRepository(store)
    community = CommunityPolicy(settings, guilds, stats)
    dreams.gate = community
    dreams.reviewer = SafetyReview(settings, dreams.engine, guilds, dreams.jobs, stats)
    prefs = PreferenceService(dreams, guilds, MemberPresetRepository(store))
    return SDBot(
        settings,
        store,
        dreams,
        credits,
        guilds,
        actions,
        ImageRequests(dreams),
        prefs,
        community,
        TrainingService(dreams, LoraRepository(store), community),
    )


EXIT_CONFIG = 2


def run_bot(settings: Settings) -> int:
    """Run until stopped; the caller has checked that there is a token, and the set-up
    (bot/cli/doctor.py). What Discord refuses at login is the owner's to fix: one line, exit 2."""
    token = settings.discord_token
    assert token is not None
    bot = build_bot(settings)

    async def runner() -> None:
        async with bot:
            await bot.start(token.get_secret_value())

    try:
        asyncio.run(runner())
    except KeyboardInterrupt:
        log.info("stopped")
    except discord.LoginFailure:
        print(
            "SDBOT_DISCORD_TOKEN was refused by Discord: copy it again from the developer "
            "portal (your application, Bot, Reset Token)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    except aiohttp.ClientConnectorError as error:
        print(
            f"Discord could not be reached ({error}): check this machine's network",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return 0

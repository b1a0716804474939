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
from bot.generation.batching import ImageBudget
from bot.generation.describe import Descriptions
from bot.generation.handler import GenerationHandler
from bot.generation.imaging import ImageRequests
from bot.generation.options import STANDARD_JOB
from bot.generation.service import DreamService
from bot.jobs.contracts import IdleWait, plain_wait
from bot.jobs.engines import build_engine
from bot.jobs.inputs import InputStore
from bot.jobs.kinds import JobKind
from bot.jobs.queue import JobQueue
from bot.jobs.scheduler import Scheduler
from bot.settings import MAX_BATCH_JOBS, Settings
from bot.training.folders import TrainingFolders
from bot.training.handler import TrainingHandler
from bot.training.lora_folder import LoraFolder
from bot.training.loras import LoraLibrary
from bot.training.service import TrainingService
from data.credits import CreditRepository
from data.descriptions import DescriptionRepository
from data.guilds import GuildSettingsRepository
from data.jobs import JobRepository
from data.loras import LoraRepository
from data.members import MemberPresetRepository
from data.stats import StatsRepository
from data.store import Store
from engine.api.port import EnginePort

log = logging.getLogger(__name__)


def build_bot(
    settings: Settings, engine: EnginePort | None = None, idle_wait: IdleWait = plain_wait
) -> SDBot:
    """Everything the bot depends on, built here and passed down; nothing is started yet.

    `idle_wait`: how the bot awaits work and the engine (a test harness passes its own).
    """
    store = Store(settings.db_path)
    policy = settings.credit_policy()
    engine = engine or build_engine(settings)
    jobs = JobRepository(store, policy)
    credit_book = CreditRepository(store, policy)
    inputs = InputStore(settings.inputs_dir)
    loras = LoraRepository(store)
    stats = StatsRepository(store)
    guilds = GuildSettingsService(settings, GuildSettingsRepository(store))
    # A server's rules and the safety review apply to every job, of every kind.
    community = CommunityPolicy(settings, guilds, stats)
    reviewer = SafetyReview(settings, engine, guilds, jobs, stats)
    images = GenerationHandler(settings.images_dir, jobs, credit_book, inputs, engine, reviewer)
    trainer = TrainingHandler(
        TrainingFolders(settings.data_dir),
        settings.images_dir,
        jobs,
        loras,
        inputs,
        engine,
        reviewer,
        images,
    )
    scheduler = Scheduler(
        jobs,
        job_queue(settings, engine),
        {JobKind.GENERATE: images, JobKind.TRAIN: trainer},
        engine,
        idle_wait,
    )
    # The owner's folder of downloaded LoRA files, usable by everyone (SDBOT_LORA_DIR).
    folder = LoraFolder(settings.lora_dir) if settings.lora_dir is not None else None
    library = LoraLibrary(settings.model_specs(), loras, folder)
    dreams = DreamService(
        settings, jobs, credit_book, scheduler, images, gate=community, adapters=library
    )
    training = TrainingService(
        settings,
        jobs,
        credit_book,
        inputs,
        scheduler,
        trainer,
        loras,
        library,
        community=community,
    )
    actions = ResultActions(settings, jobs, guilds, dreams, inputs)
    prefs = PreferenceService(settings, guilds, MemberPresetRepository(store))
    descriptions = Descriptions(
        settings, engine, DescriptionRepository(store), actions, dreams, prefs, community
    )
    return SDBot(
        settings,
        store,
        engine,
        scheduler,
        dreams,
        CreditService(credit_book, dreams.price(STANDARD_JOB)),
        guilds,
        actions,
        ImageRequests(dreams, inputs),
        prefs,
        community,
        training,
        library,
        descriptions,
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


def job_queue(settings: Settings, engine: EnginePort) -> JobQueue:
    """SDBOT_MAX_BATCH: auto batches as many images as the engine's card holds; a number
    caps the jobs per batch, as before."""
    if settings.max_batch == "auto":
        return JobQueue(max_batch=MAX_BATCH_JOBS, fits=ImageBudget(engine))
    return JobQueue(max_batch=settings.max_batch)

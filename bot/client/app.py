"""The `commands.Bot` subclass: dependencies in, everything asynchronous in `setup_hook`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import discord
from discord.ext import commands

from bot.client.replies import RecentInteractions, reply_ephemeral
from bot.client.tree import SDCommandTree
from bot.community.credits import CreditService
from bot.community.guilds import GuildSettingsService
from bot.community.policy import CommunityPolicy
from bot.community.prefs import PreferenceService
from bot.generation.actions import ResultActions
from bot.generation.describe import Descriptions
from bot.generation.imaging import ImageRequests
from bot.generation.service import DreamService
from bot.jobs import recovery
from bot.jobs.retention import Sweeper
from bot.jobs.scheduler import Scheduler
from bot.settings import Settings
from bot.training.loras import LoraLibrary
from bot.training.service import TrainingService
from data.store import Store
from engine.api.port import EnginePort

log = logging.getLogger(__name__)

# Every custom id of the bot's own buttons starts so (cogs/ui/buttons.py, cogs/train.py).
CUSTOM_ID_PREFIX = "sd:"
UNKNOWN_BUTTON = "That button no longer does anything; use the newest message's buttons."

EXTENSIONS = (
    "cogs.dream",
    "cogs.images",
    "cogs.edit",
    "cogs.interpolate",
    "cogs.blend",
    "cogs.results",
    "cogs.admin",
    "cogs.credits",
    "cogs.queue",
    "cogs.info",
    "cogs.settings",
    "cogs.prefer",
    "cogs.models",
    "cogs.stats",
    "cogs.train",
    "cogs.loras",
    "cogs.describe",
)


class SDBot(commands.Bot):
    def __init__(
        self,
        settings: Settings,
        store: Store,
        engine: EnginePort,
        scheduler: Scheduler,
        dreams: DreamService,
        credits: CreditService,
        guilds: GuildSettingsService,
        actions: ResultActions,
        images: ImageRequests,
        prefs: PreferenceService,
        community: CommunityPolicy,
        training: TrainingService,
        library: LoraLibrary,
        descriptions: Descriptions,
    ) -> None:
        # Slash commands only: no message-content intent is needed (DM text is readable).
        intents = discord.Intents.default()
        intents.dm_messages = True  # `balance` and `help` by DM
        intents.guild_reactions = True  # 🔄 ❌ ✉️ on results
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=SDCommandTree,
            help_command=None,
            # Empty means "the application's owner or team", which discord.py looks up.
            owner_ids=set(settings.owner_ids) or None,
            # Nobody is pinged unless a message names exactly whom
            # (bot.client.replies.mention_only): members' prompts are quoted back, and may hold
            # @everyone or a role.
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.settings = settings
        self.store = store
        self.engine = engine
        self.scheduler = scheduler
        self.dreams = dreams
        self.credits = credits
        self.guild_settings = guilds
        self.actions = actions
        self.images = images
        self.prefs = prefs
        self.community = community
        self.training = training
        self.library = library  # the LoRAs and embeddings members trained
        self.descriptions = descriptions  # /describe's prompts and their buttons
        self.models = dreams.models  # the models the owner configured, by name
        self._dispatcher: asyncio.Task[None] | None = None
        # The store and the engine, opened in setup_hook and closed, engine first, in close.
        self._resources = contextlib.AsyncExitStack()
        self._sweeper: Sweeper | None = None
        self._recent_interactions = RecentInteractions()
        self._dynamic_items: set[type[discord.ui.DynamicItem[Any]]] = set()

    async def setup_hook(self) -> None:
        await self._resources.enter_async_context(self.store)
        await self._resources.enter_async_context(self.engine)
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        # After the cogs: they tell the scheduler how to reach members of restored jobs.
        # The outbox first: what recovery ends now is told as it ends.
        undelivered = await recovery.redeliver(self.scheduler)
        restored, ended = await recovery.recover(self.scheduler)
        if restored or ended or undelivered:
            log.warning(
                "restart: %d job(s) back in the queue, %d ended and refunded (failed, or "
                "cancelled by their member), %d earlier outcome(s) being told",
                len(restored),
                len(ended),
                len(undelivered),
            )
        self._dispatcher = asyncio.create_task(self.scheduler.run(), name="sd-dispatcher")
        # After recovery: it has settled which jobs are still pending (their files stay).
        self._sweeper = Sweeper.for_settings(self.settings, self.store)
        if self._sweeper is not None:
            self._sweeper.start()
        await self.sync_dev_guild()

    async def sync_dev_guild(self) -> None:
        """Sync commands to the development guild at start; global sync is left to the owner."""
        guild_id = self.settings.dev_guild_id
        if guild_id is None:
            return
        guild = discord.Object(id=guild_id)
        self.tree.copy_global_to(guild=guild)
        synced = await self.tree.sync(guild=guild)
        log.info("synced %d command(s) to development guild %s", len(synced), guild_id)

    async def close(self) -> None:
        # First: a sweep under way finishes while the database is still open.
        if self._sweeper is not None:
            await self._sweeper.stop()
        if self._dispatcher is not None:
            await self.scheduler.stop(self._dispatcher)
        await self.scheduler.close()
        await super().close()
        await self._resources.aclose()

    def add_dynamic_items(self, *items: type[discord.ui.DynamicItem[Any]]) -> None:
        super().add_dynamic_items(*items)
        self._dynamic_items.update(items)

    def remove_dynamic_items(self, *items: type[discord.ui.DynamicItem[Any]]) -> None:
        super().remove_dynamic_items(*items)
        self._dynamic_items.difference_update(items)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """A click on one of our custom ids that no button of ours reads (crafted, or from a
        version of the bot that had other buttons) would get no answer and leave the member
        with "This interaction failed": answer it."""
        if interaction.type is not discord.InteractionType.component:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        custom_id = str(data.get("custom_id", ""))
        if not custom_id.startswith(CUSTOM_ID_PREFIX) or self._reads(custom_id):
            return
        if not interaction.response.is_done():
            await reply_ephemeral(interaction, f"❌ {UNKNOWN_BUTTON}")

    def _reads(self, custom_id: str) -> bool:
        return any(
            item.__discord_ui_compiled_template__.fullmatch(custom_id)
            for item in self._dynamic_items
        )

    def first_delivery(self, interaction: discord.Interaction) -> bool:
        """False for an interaction Discord delivered again (the tree, buttons and modals
        drop it without an answer)."""
        return self._recent_interactions.first_delivery(interaction.id)

    def is_owner_id(self, user_id: int) -> bool:
        """Configured owners, or the application's owner or team as discord.py knows them."""
        known = set(self.settings.owner_ids) | set(self.owner_ids or ())
        if self.owner_id is not None:
            known.add(self.owner_id)
        return user_id in known

    def is_admin(self, user: discord.abc.User) -> bool:
        """Owners, and members who may manage a server listed in SDBOT_ADMIN_GUILD_IDS (every
        server when the list is empty)."""
        if self.is_owner_id(user.id):
            return True
        if not isinstance(user, discord.Member) or not user.guild_permissions.manage_guild:
            return False
        allowed = self.settings.admin_guild_ids
        return not allowed or user.guild.id in allowed

    async def on_ready(self) -> None:
        log.info("logged in as %s (%s)", self.user, self.user.id if self.user else "?")

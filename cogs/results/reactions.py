"""What the reactions on a result do: 🔄 rerolls it, ❌ deletes it, ✉️ sends it by DM.

As with its buttons, every reaction re-checks who may press; there is no interaction to
answer, so a refusal is told by DM.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.client.replies import mention_only
from bot.generation.actions import Action, Presser
from bot.generation.results import ResultImage
from bot.jobs.contracts import JobRefused
from cogs.results.clicks import action_label
from cogs.ui.buttons import view_factory
from cogs.ui.context import presser_of
from cogs.ui.infotext import infotext_embed
from cogs.ui.presenter import ReplyPresenter, previews_allowed, tell_privately
from cogs.ui.rendering import DEFAULT_FILE_LIMIT, REQUEST_LIMIT, frames_as_files
from engine.api.params import GenerationParams, InvalidParams
from engine.imaging.images import fit_to_limit

if TYPE_CHECKING:
    from bot.client.app import SDBot

log = logging.getLogger(__name__)

REROLL, DELETE, SEND_ME = "🔄", "❌", "✉️"
REACTIONS = (REROLL, DELETE, SEND_ME)


class Reactions(commands.Cog):
    """The reactions on results: a cog beside `Results` (their buttons), in one extension."""

    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        me = self.bot.user
        emoji = str(payload.emoji)
        if me is None or payload.user_id == me.id or emoji not in REACTIONS:
            return
        user = payload.member or self.bot.get_user(payload.user_id)
        if user is None:
            with contextlib.suppress(discord.HTTPException):
                user = await self.bot.fetch_user(payload.user_id)
        channel = self.bot.get_channel(payload.channel_id)
        if user is None or not isinstance(channel, discord.abc.Messageable):
            return
        job = await self.bot.actions.result_for_message(payload.message_id)
        if job is None:
            # 🔄 and ❌ are everyday reactions on members' messages: only a message of the
            # bot's own that is not a result gets an answer.
            if await self._author_of(payload, channel) == me.id:
                await tell_privately(self.bot, user, "That message is not a result I can act on.")
            return
        presser = presser_of(self.bot, user, payload.guild_id, payload.channel_id, channel)
        message = channel.get_partial_message(payload.message_id)  # type: ignore[attr-defined]
        try:
            if emoji == REROLL:
                await self._reroll_reacted(job.id, presser, user, channel, message)
            elif emoji == DELETE:
                await self.bot.actions.delete(job.id, presser)
                with contextlib.suppress(discord.HTTPException):
                    await message.delete()
                return
            else:
                await self._send_by_dm(job.id, presser, user, channel)
        except (JobRefused, InvalidParams) as refused:
            # No interaction to answer: by DM, else a line in the channel that quotes nothing.
            await tell_privately(self.bot, user, f"❌ {refused}", channel=channel)
        # Taken off again so the member can react once more (needs Manage Messages).
        with contextlib.suppress(discord.HTTPException):
            await message.remove_reaction(payload.emoji, user)

    async def _author_of(
        self, payload: discord.RawReactionActionEvent, channel: discord.abc.Messageable
    ) -> int | None:
        """Discord names the author in the event; older gateways do not, so then the cache,
        then one fetch."""
        if payload.message_author_id is not None:
            return payload.message_author_id
        cached = discord.utils.get(self.bot.cached_messages, id=payload.message_id)
        if cached is not None:
            return cached.author.id
        try:
            return (await channel.fetch_message(payload.message_id)).author.id
        except discord.HTTPException:
            return None

    async def _reroll_reacted(
        self,
        job_id: int,
        presser: Presser,
        user: discord.abc.User,
        channel: discord.abc.Messageable,
        message: discord.PartialMessage,
    ) -> None:
        observer = ReplyPresenter(
            self.bot,
            channel,
            message,
            user,
            action_label(Action.REROLL, None),
            self.bot.settings.progress_interval,
            view=view_factory(self.bot),
        )
        observer.previews = previews_allowed(self.bot.settings, presser.requester.age_restricted)
        ticket = await self.bot.actions.start(Action.REROLL, job_id, presser, observer)
        if not ticket.duplicate:
            message_id = await observer.queued(ticket)
            if message_id is not None:
                await self.bot.scheduler.set_message(ticket.job.id, message_id)

    async def _files(
        self, job_id: int, presser: Presser, images: list[ResultImage]
    ) -> list[discord.File]:
        """Under Discord's limits as results are: each file, and the request as a whole; an
        interpolation's frames as its animation (48 frames would pass the 10 files a message
        takes)."""
        params = GenerationParams.from_dict((await self.bot.actions.result(job_id, presser)).params)
        if params.mode == "interpolate":
            pngs = [image.png for image in images]
            return await asyncio.to_thread(
                frames_as_files, job_id, pngs, images[0].infotext, DEFAULT_FILE_LIMIT, params
            )
        per_file = min(DEFAULT_FILE_LIMIT, REQUEST_LIMIT // len(images))
        files = []
        for image in images:
            fitted = await asyncio.to_thread(fit_to_limit, image.png, image.infotext, per_file)
            name = image.filename.rsplit(".", 1)[0] + f".{fitted.extension}"
            files.append(discord.File(io.BytesIO(fitted.data), filename=name))
        return files

    async def _send_by_dm(
        self,
        job_id: int,
        presser: Presser,
        user: discord.abc.User,
        channel: discord.abc.Messageable,
    ) -> None:
        images = await self.bot.actions.images(job_id, presser)
        # The safety filter's blur or spoiler is not to be undone by asking for a copy.
        withheld = await self.bot.community.withheld(job_id)
        images = [image for image in images if image.idx not in withheld]
        if not images:
            raise JobRefused("The safety filter flagged this result; it cannot be sent on.")
        files = await self._files(job_id, presser, images)
        embed = infotext_embed(images[0].infotext)
        text = f"Job {job_id}, as you asked:"
        if withheld:
            text += f" ({len(withheld)} flagged image(s) left out.)"
        try:
            await user.send(text, embed=embed, files=files)  # type: ignore[attr-defined]
        except discord.Forbidden as closed:  # 50007: the member does not take DMs from us
            log.info("could not DM user %s (%s)", user.id, closed)
            await channel.send(
                f"{user.mention} I could not send you a DM; open your DMs and react again.",
                allowed_mentions=mention_only(user),
                delete_after=30,
            )

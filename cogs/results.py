"""What the buttons and reactions under a result do.

Every click and reaction re-checks who may press; actions that make images become new
jobs (charged to whoever pressed, queued fairly) whose results are posted as replies to
the result they came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.client.replies import first_delivery, mention_only
from bot.generation.actions import MAX_ZOOM, MIN_ZOOM, Action, Presser
from bot.jobs.contracts import JobRefused, Ticket
from cogs.info import infotext_embed
from cogs.ui.buttons import RESULTS_COG, ResultButton, view_factory
from cogs.ui.context import requester_of
from cogs.ui.presenter import (
    DEFAULT_FILE_LIMIT,
    REQUEST_LIMIT,
    ReplyPresenter,
    credits_text,
    previews_allowed,
    tell_privately,
)
from engine.api.params import GenerationParams, InvalidParams
from engine.api.samplers import AUTOMATIC
from engine.imaging.images import fit_to_limit

if TYPE_CHECKING:
    from bot.client.app import SDBot

log = logging.getLogger(__name__)

REROLL, DELETE, SEND_ME = "🔄", "❌", "✉️"
REACTIONS = (REROLL, DELETE, SEND_ME)
# Discord: text inputs hold at most 4000 characters.
MAX_MODAL_TEXT = 4000


def reproduce_command(params: GenerationParams) -> str:
    """The /dream line that makes these images again (text to image only)."""
    options = [
        f"prompt:{params.prompt}",
        f"negative:{params.negative}" if params.negative else "",
        f"seed:{params.seed}",
        f"steps:{params.steps}",
        f"cfg:{params.cfg:g}",
        f"size:{params.size}",
        f"sampler:{params.sampler}",
        f"scheduler:{params.schedule}" if params.schedule != AUTOMATIC else "",
        f"count:{params.count}",
        f"model:{params.model}",
        f"clip_skip:{params.clip_skip}" if params.clip_skip != 1 else "",
    ]
    if params.has_variation:
        options += [
            f"variation_seed:{params.variation_seed}",
            f"variation_strength:{params.variation_strength:g}",
        ]
    return "/dream " + " ".join(option for option in options if option)


class EditModal(discord.ui.Modal, title="Edit and run again"):
    def __init__(self, cog: Results, job_id: int, params: GenerationParams) -> None:
        super().__init__(timeout=15 * 60)
        self.cog = cog
        self.job_id = job_id
        self.prompt: discord.ui.TextInput[EditModal] = discord.ui.TextInput(
            label="Prompt",
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            default=params.prompt[:MAX_MODAL_TEXT],
            max_length=MAX_MODAL_TEXT,
        )
        self.negative: discord.ui.TextInput[EditModal] = discord.ui.TextInput(
            label="Negative prompt",
            custom_id="negative",
            style=discord.TextStyle.paragraph,
            default=params.negative[:MAX_MODAL_TEXT],
            max_length=MAX_MODAL_TEXT,
            required=False,
        )
        self.add_item(self.prompt)
        self.add_item(self.negative)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return first_delivery(interaction)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.cog.run_action(
            interaction,
            Action.EDIT,
            self.job_id,
            prompt=self.prompt.value,
            negative=self.negative.value,
        )


class ZoomModal(discord.ui.Modal, title="Custom zoom"):
    """Midjourney's Custom Zoom: how far out, and the prompt for what the border shows."""

    def __init__(self, cog: Results, job_id: int, params: GenerationParams) -> None:
        super().__init__(timeout=15 * 60)
        self.cog = cog
        self.job_id = job_id
        self.factor: discord.ui.TextInput[ZoomModal] = discord.ui.TextInput(
            label=f"Zoom out by ({MIN_ZOOM:g} to {MAX_ZOOM:g})",
            custom_id="zoom",
            default="2",
            max_length=8,
        )
        self.prompt: discord.ui.TextInput[ZoomModal] = discord.ui.TextInput(
            label="Prompt",
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            default=params.prompt[:MAX_MODAL_TEXT],
            max_length=MAX_MODAL_TEXT,
        )
        self.add_item(self.factor)
        self.add_item(self.prompt)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return first_delivery(interaction)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.cog.run_action(
            interaction,
            Action.ZOOM_CUSTOM,
            self.job_id,
            image=0,
            prompt=self.prompt.value,
            zoom=self.factor.value,
        )


class Results(commands.Cog, name=RESULTS_COG):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ResultButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ResultButton)

    def _presser(self, interaction: discord.Interaction) -> Presser:
        return self._presser_of(
            interaction.user, interaction.guild_id, interaction.channel_id, interaction.channel
        )

    def _presser_of(
        self, user: discord.abc.User, guild_id: int | None, channel_id: int | None, channel: Any
    ) -> Presser:
        """Who pressed (a button or a reaction), with their standing and channel."""
        is_admin = self.bot.is_admin(user)
        return Presser(
            user_id=user.id,
            guild_id=guild_id,
            channel_id=channel_id,
            is_admin=is_admin,
            is_owner=self.bot.is_owner_id(user.id),
            requester=requester_of(user, channel, is_admin=is_admin),
        )

    # -- buttons ----------------------------------------------------------------------

    async def clicked(
        self, interaction: discord.Interaction, name: str, job_id: int, image: int | None
    ) -> None:
        if name == "info":
            await self.show_info(interaction, job_id)
        elif name == "delete":
            await self.delete_clicked(interaction, job_id)
        elif name == "edit":
            await self.edit_clicked(interaction, job_id)
        elif name == Action.ZOOM_CUSTOM:
            await self.edit_clicked(interaction, job_id, modal=ZoomModal)
        else:
            await self.run_action(interaction, Action(name), job_id, image=image)

    async def run_action(
        self,
        interaction: discord.Interaction,
        action: Action,
        job_id: int,
        *,
        image: int | None = None,
        prompt: str | None = None,
        negative: str | None = None,
        zoom: str | None = None,
    ) -> None:
        # Deferred first, privately: the queue position is for the presser alone, and the
        # work below (reading images, the store) may outlast Discord's 3 seconds.
        await interaction.response.defer(ephemeral=True, thinking=True)
        channel = interaction.channel
        if not isinstance(channel, discord.abc.Messageable):
            await interaction.followup.send("❌ I cannot post in this channel.", ephemeral=True)
            return
        observer = ReplyPresenter(
            self.bot,
            channel,
            interaction.message,
            interaction.user,
            _action_label(action, image),
            self.bot.settings.progress_interval,
            interaction=interaction,
            view=view_factory(self.bot),
        )
        presser = self._presser(interaction)
        observer.previews = previews_allowed(self.bot.settings, presser.requester.age_restricted)
        try:
            ticket = await self.bot.actions.start(
                action,
                job_id,
                presser,
                observer,
                image=image,
                prompt=prompt,
                negative=negative,
                zoom=zoom,
                interaction_id=interaction.id,
            )
        except (JobRefused, InvalidParams) as refused:
            await interaction.followup.send(f"❌ {refused}", ephemeral=True)
            return
        await interaction.followup.send(await self._acknowledge(ticket, observer), ephemeral=True)

    async def _acknowledge(self, ticket: Ticket, observer: ReplyPresenter) -> str:
        if ticket.duplicate:
            return f"That is already on its way as job {ticket.job.id}; nothing more was charged."
        message_id = await observer.queued(ticket)
        if message_id is not None:
            await self.bot.dreams.set_message(ticket.job.id, message_id)
        note = f" {ticket.note}" if ticket.note else ""
        return (
            f"Queued as job {ticket.job.id}, position {ticket.position}. "
            f"Cost {credits_text(ticket.job.cost)}, balance {ticket.balance}.{note}"
        )

    async def show_info(self, interaction: discord.Interaction, job_id: int) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            job = await self.bot.actions.result(job_id, self._presser(interaction))
            infotexts = await self.bot.actions.infotexts(job)
        except JobRefused as refused:
            await interaction.followup.send(f"❌ {refused}", ephemeral=True)
            return
        params = GenerationParams.from_dict(job.params)
        embed = infotext_embed(infotexts[0]) if infotexts else discord.Embed(title="Parameters")
        embed.title = f"Job {job.id}"
        if params.mode == "txt2img":
            command = reproduce_command(params)
            text = f"Make it again:\n```\n{command[:1900]}\n```"
        else:
            text = "Drop one of its images into /reproduce or A1111's PNG Info to read it back."
        await interaction.followup.send(text, embed=embed, ephemeral=True)

    async def edit_clicked(
        self,
        interaction: discord.Interaction,
        job_id: int,
        modal: type[EditModal | ZoomModal] = EditModal,
    ) -> None:
        # A modal must be the first response, so the checks come before any deferral.
        try:
            job = await self.bot.actions.result(job_id, self._presser(interaction), use=True)
        except JobRefused as refused:
            await interaction.response.send_message(f"❌ {refused}", ephemeral=True)
            return
        params = GenerationParams.from_dict(job.params)
        await interaction.response.send_modal(modal(self, job_id, params))

    async def delete_clicked(self, interaction: discord.Interaction, job_id: int) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await self.bot.actions.delete(job_id, self._presser(interaction))
        except JobRefused as refused:
            await interaction.followup.send(f"❌ {refused}", ephemeral=True)
            return
        if interaction.message is not None:
            with contextlib.suppress(discord.HTTPException):
                await interaction.message.delete()
        await interaction.followup.send(f"Deleted job {job_id}'s result.", ephemeral=True)

    # -- reactions --------------------------------------------------------------------

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
        presser = self._presser_of(user, payload.guild_id, payload.channel_id, channel)
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
            _action_label(Action.REROLL, None),
            self.bot.settings.progress_interval,
            view=view_factory(self.bot),
        )
        observer.previews = previews_allowed(self.bot.settings, presser.requester.age_restricted)
        ticket = await self.bot.actions.start(Action.REROLL, job_id, presser, observer)
        if not ticket.duplicate:
            message_id = await observer.queued(ticket)
            if message_id is not None:
                await self.bot.dreams.set_message(ticket.job.id, message_id)

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
        # Under Discord's limits as results are: each file, and the request as a whole.
        per_file = min(DEFAULT_FILE_LIMIT, REQUEST_LIMIT // len(images))
        files = []
        for image in images:
            fitted = await asyncio.to_thread(fit_to_limit, image.png, image.infotext, per_file)
            name = image.filename.rsplit(".", 1)[0] + f".{fitted.extension}"
            files.append(discord.File(io.BytesIO(fitted.data), filename=name))
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


def _action_label(action: Action, image: int | None) -> str:
    """ "Upscale of image 2", "Reroll": how the reply names what was asked."""
    if action.reframes or image is None:  # reframes are offered under one picture only
        return action.label
    return f"{action.label} of image {image + 1}"


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Results(bot))

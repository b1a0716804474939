"""A button press that starts a job for whoever pressed: a result's buttons
(cogs/results/clicks.py) and /describe's 1-4 (cogs/describe.py) share it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord

from bot.generation.results import Presser
from bot.jobs.contracts import JobRefused, Ticket
from cogs.ui.buttons import view_factory
from cogs.ui.context import presser_of
from cogs.ui.live import with_pause
from cogs.ui.presenter import ReplyPresenter, previews_allowed
from cogs.ui.rendering import credits_text
from engine.api.params import InvalidParams

if TYPE_CHECKING:
    from bot.client.app import SDBot

Start = Callable[[Presser, ReplyPresenter], Awaitable[Ticket]]


async def start_for_presser(
    bot: SDBot, interaction: discord.Interaction, label: str, start: Start
) -> None:
    """Defer privately, make the presenter that replies under the pressed message, `start`
    the job for the presser and tell them, alone, where it stands or why not."""
    # Deferred first, privately: the queue position is for the presser alone, and the
    # work below (reading images, the store) may outlast Discord's 3 seconds.
    await interaction.response.defer(ephemeral=True, thinking=True)
    channel = interaction.channel
    if not isinstance(channel, discord.abc.Messageable):
        await interaction.followup.send("❌ I cannot post in this channel.", ephemeral=True)
        return
    observer = ReplyPresenter(
        bot,
        channel,
        interaction.message,
        interaction.user,
        label,
        bot.settings.progress_interval,
        interaction=interaction,
        view=view_factory(bot),
    )
    presser = presser_of(
        bot, interaction.user, interaction.guild_id, interaction.channel_id, channel
    )
    observer.previews = previews_allowed(bot.settings, presser.requester.age_restricted)
    try:
        ticket = await start(presser, observer)
    except (JobRefused, InvalidParams) as refused:
        await interaction.followup.send(f"❌ {refused}", ephemeral=True)
        return
    await interaction.followup.send(await acknowledge(bot, ticket, observer), ephemeral=True)


async def acknowledge(bot: SDBot, ticket: Ticket, observer: ReplyPresenter) -> str:
    if ticket.duplicate:
        return f"That is already on its way as job {ticket.job.id}; nothing more was charged."
    message_id = await observer.queued(ticket)
    if message_id is not None:
        await bot.scheduler.set_message(ticket.job.id, message_id)
    notes = with_pause(ticket.note, ticket.paused)
    note = f" {notes}" if notes else ""
    if ticket.params.mask_preview:
        return (
            f"Mask preview queued as job {ticket.job.id}, position {ticket.position}: "
            f"nothing is charged unless you press Run under it.{note}"
        )
    return (
        f"Queued as job {ticket.job.id}, position {ticket.position}. "
        f"Cost {credits_text(ticket.job.cost)}, balance {ticket.balance}.{note}"
    )

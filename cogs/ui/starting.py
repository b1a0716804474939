"""How a slash command's job starts: its attachments checked and downloaded, its parameters
submitted, and its live message shown in the interaction's response."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import discord

from bot.generation.imaging import Prepared
from bot.generation.options import Checked
from bot.jobs.contracts import JobRefused
from cogs.ui.buttons import view_factory
from cogs.ui.context import DirectPresenter, requester_of
from cogs.ui.presenter import DreamPresenter, previews_allowed
from engine.api.params import InvalidParams

if TYPE_CHECKING:
    from bot.client.app import SDBot

log = logging.getLogger(__name__)

Uploads = dict[str, bytes | None]  # an attachment's bytes by what it is, None when absent
CONTROL_IMAGE = "control image"


async def start_from_uploads(
    bot: SDBot,
    interaction: discord.Interaction,
    uploads: Mapping[str, discord.Attachment | None],
    prepare: Callable[[Uploads], Awaitable[Prepared]],
    *,
    dm: bool | None = None,
) -> None:
    """A job that starts from attachments: sizes checked, defer, download, prepare, queue.

    A file over the size limit is refused before a byte is downloaded (an ephemeral
    answer, no "thinking" message); a bad picture after the defer is told privately.
    """
    for what, attachment in uploads.items():
        if attachment is not None:
            bot.images.check_size(attachment.size, what)
    await interaction.response.defer(thinking=True)
    try:
        data: Uploads = {}
        for what, attachment in uploads.items():
            data[what] = await download(attachment, what) if attachment else None
        prepared = await prepare(data)
    except InvalidParams as bad:
        await DreamPresenter(interaction, 0.0).refused(f"❌ {bad}")
        return
    await start_job(bot, interaction, prepared.params, prepared.note, dm=dm)


async def start_job(
    bot: SDBot,
    interaction: discord.Interaction,
    params: Checked,
    note: str = "",
    *,
    dm: bool | None = None,
) -> None:
    """Submit checked parameters for a deferred interaction and show the job's progress.

    `note` is said with the queue position (for example what /reproduce could not honour).
    `dm`: deliver the result by DM; None follows the member's preference.
    """
    if dm is None:
        dm = (await bot.prefs.defaults(interaction.user.id)).dm
    presenter_type = DirectPresenter if dm else DreamPresenter
    presenter = presenter_type(
        interaction, bot.settings.progress_interval, note, view=view_factory(bot)
    )
    requester = requester_of(
        interaction.user, interaction.channel, is_admin=bot.is_admin(interaction.user)
    )
    presenter.previews = previews_allowed(bot.settings, requester.age_restricted)
    try:
        ticket = await bot.dreams.submit(
            params,
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            interaction_id=interaction.id,
            observer=presenter,
            requester=requester,
            private=dm,
        )
    except (JobRefused, InvalidParams) as refused:
        await presenter.refused(f"❌ {refused}")
        return
    if ticket.note:  # what the server's rules changed, shown while it waits and with the result
        presenter.note = " ".join(part for part in (presenter.note, ticket.note) if part)
    message_id = await presenter.queued(ticket)
    if message_id is not None:
        await bot.scheduler.set_message(ticket.job.id, message_id)


async def download(attachment: discord.Attachment, what: str) -> bytes:
    """An attachment's bytes; its size was checked against the limit before this."""
    try:
        return await attachment.read()
    except discord.HTTPException as error:
        log.info("could not download attachment %s (%s)", attachment.id, error)
        raise InvalidParams(f"I could not download the {what}; send it again.") from None

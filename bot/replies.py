"""Answering an interaction privately whatever state it is in."""

from __future__ import annotations

import logging

import discord

log = logging.getLogger(__name__)


async def reply_ephemeral(
    interaction: discord.Interaction, content: str, *, fallback_to_channel: bool = False
) -> None:
    """Tell the member alone: as the response if none was sent, else as a followup.

    After a deferral Discord turns the first followup into the deferred ("thinking")
    response, keeping that response's visibility whatever the followup asks. So a deferred
    response is completed and deleted first; then the followup is a message of its own.
    The token lives 15 minutes: with `fallback_to_channel`, a member it can no longer reach
    is mentioned in the channel instead.
    """
    response = interaction.response
    try:
        if not response.is_done():
            await response.send_message(content, ephemeral=True)
            return
        if response.type is discord.InteractionResponseType.deferred_channel_message:
            await _retract_original(interaction)
        await interaction.followup.send(content, ephemeral=True)
        return
    except discord.HTTPException as error:
        log.info("could not reply to interaction %s privately (%s)", interaction.id, error)
    channel = interaction.channel
    if fallback_to_channel and isinstance(channel, discord.abc.Messageable):
        try:
            await channel.send(
                f"{interaction.user.mention} {content}",
                allowed_mentions=discord.AllowedMentions(users=True),
            )
            return
        except discord.HTTPException:
            pass
    log.warning("could not tell user %s: %s", interaction.user.id, content)


async def _retract_original(interaction: discord.Interaction) -> None:
    try:
        # Editing completes a response still "thinking", which can then be deleted.
        await interaction.edit_original_response(content="…", embed=None, attachments=[])
        await interaction.delete_original_response()
    except discord.HTTPException as error:
        log.info("could not remove the response to %s (%s)", interaction.id, error)

"""Answering an interaction safely whatever state it is in."""

from __future__ import annotations

import logging

import discord

log = logging.getLogger(__name__)


async def reply_ephemeral(interaction: discord.Interaction, content: str) -> None:
    """An ephemeral message: the response if none was sent yet, else a followup.

    A deferred, non-ephemeral "thinking" response would swallow a first followup's
    ephemeral flag, so the caller removes it first (see `cogs.dream.DreamPresenter`).
    """
    try:
        if interaction.response.is_done():
            await interaction.followup.send(content, ephemeral=True)
        else:
            await interaction.response.send_message(content, ephemeral=True)
    except discord.HTTPException:  # token expired or the channel vanished: nothing to tell
        log.warning("could not reply to interaction %s: %s", interaction.id, content)

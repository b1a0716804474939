"""The command tree: known errors become a short ephemeral reply, the rest are logged."""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from bot.client.replies import first_delivery, is_already_acknowledged, reply_ephemeral
from engine.api.params import InvalidParams

log = logging.getLogger(__name__)


class SDCommandTree(app_commands.CommandTree):
    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """A command or autocomplete Discord delivers a second time is dropped unanswered."""
        return first_delivery(interaction)

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        original = getattr(error, "original", error)
        if is_already_acknowledged(original):  # delivered twice; the first delivery answered
            log.info("dropped a repeat of interaction %s", interaction.id)
            return
        if isinstance(original, InvalidParams):
            await reply_ephemeral(interaction, str(original))
            return
        if isinstance(error, app_commands.TransformerError):
            await reply_ephemeral(interaction, str(error.__cause__ or error))
            return
        if isinstance(error, app_commands.CheckFailure):
            await reply_ephemeral(interaction, str(error) or "You cannot use this command here.")
            return
        command = interaction.command.qualified_name if interaction.command else "?"
        log.error(
            "command %s failed for user=%s guild=%s",
            command,
            interaction.user.id,
            interaction.guild_id,
            exc_info=original,
        )
        await reply_ephemeral(interaction, "Something went wrong; the bot's owner can see the log.")

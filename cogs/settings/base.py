"""The /settings group and what its subcommands share: the admin check, saving a value, the
answer that says what was saved."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from cogs.ui.context import ADMINS_ONLY
from engine.api.checks import parse_size
from engine.api.params import InvalidParams

if TYPE_CHECKING:
    from bot.client.app import SDBot


def size_pixels(text: str) -> int:
    width, height = parse_size(text)
    if width < 64 or height < 64:
        raise InvalidParams(f"Size {width}x{height}: each side must be at least 64.")
    return width * height


class SettingsCog(commands.Cog):
    """What the classes of /settings subcommands build on; `GuildSettings` is the cog."""

    settings_group = app_commands.Group(
        name="settings",
        description="This server's settings for the bot (admins)",
        guild_only=True,
    )
    # Here with its parent rather than with its subcommands (cogs/settings/members.py): a
    # group's subcommands are synced in the order they were added, and `words` comes first.
    words_group = app_commands.Group(
        name="words", description="Words and patterns banned from prompts", parent=settings_group
    )

    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    async def _admin_guild(self, interaction: discord.Interaction) -> int | None:
        """The server's id when an admin asks; otherwise they are told, and None."""
        if interaction.guild_id is None or not self.bot.is_admin(interaction.user):
            await interaction.response.send_message(ADMINS_ONLY, ephemeral=True)
            return None
        return interaction.guild_id

    async def _put(self, interaction: discord.Interaction, key: str, value: object) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None
        await self.bot.guild_settings.put(guild_id, key, value, by=interaction.user.id)

    async def _saved(self, interaction: discord.Interaction, text: str) -> None:
        await interaction.response.send_message(f"Saved. {text}", ephemeral=True)

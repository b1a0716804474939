"""/settings: what an admin decides for their own server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.guilds import GuildPolicy

if TYPE_CHECKING:
    from bot.app import SDBot


def policy_text(policy: GuildPolicy) -> str:
    who = (
        "anyone (each pays for their own clicks)" if policy.buttons_for_anyone else "the requester"
    )
    return f"Result buttons and reactions: {who} (admins always)."


class GuildSettings(commands.Cog):
    settings_group = app_commands.Group(
        name="settings",
        description="This server's settings for the bot (admins)",
        guild_only=True,
    )

    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @settings_group.command(name="show", description="This server's settings")
    async def show(self, interaction: discord.Interaction) -> None:
        policy = await self.bot.guild_settings.policy(interaction.guild_id)
        await interaction.response.send_message(policy_text(policy), ephemeral=True)

    @settings_group.command(name="buttons", description="Who may press the buttons of results")
    @app_commands.describe(who="requester: only the member who asked; anyone: every member")
    async def buttons(
        self, interaction: discord.Interaction, who: Literal["requester", "anyone"]
    ) -> None:
        guild_id = interaction.guild_id
        if guild_id is None or not self.bot.is_admin(interaction.user):
            await interaction.response.send_message(
                "Only admins (Manage Server) can change this server's settings.", ephemeral=True
            )
            return
        await self.bot.guild_settings.set_buttons_for_anyone(
            guild_id, who == "anyone", by=interaction.user.id
        )
        policy = await self.bot.guild_settings.policy(guild_id)
        await interaction.response.send_message(f"Saved. {policy_text(policy)}", ephemeral=True)


async def setup(bot: SDBot) -> None:
    await bot.add_cog(GuildSettings(bot))

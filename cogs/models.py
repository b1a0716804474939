"""/models: the models members may use here, with their default sizes and notes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

if TYPE_CHECKING:
    from bot.client.app import SDBot

MESSAGE_LIMIT = 2000


class Models(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(name="models", description="The models you can use here")
    async def models(self, interaction: discord.Interaction) -> None:
        policy = await self.bot.guild_settings.policy(interaction.guild_id)
        lines = []
        for name, spec in sorted(self.bot.models.items()):
            if not policy.model_allowed(name):
                continue
            width, height = spec.size_default()
            default = " (default)" if name == policy.default_model else ""
            note = f": {spec.note}" if spec.note else ""
            lines.append(f"**{name}**{default}, {width}x{height}{note}")
        text = "\n".join(lines) or "No model is allowed on this server."
        await interaction.response.send_message(text[:MESSAGE_LIMIT], ephemeral=True)


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Models(bot))

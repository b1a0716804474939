"""/png-info and /reproduce: the parameters inside an image, and running them again."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from cogs.ui.infotext import attachment_infotext, infotext_embed
from cogs.ui.presenter import DreamPresenter
from cogs.ui.starting import start_job
from engine.api.params import InvalidParams

if TYPE_CHECKING:
    from bot.client.app import SDBot


class Info(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(name="png-info", description="Show the parameters inside an image")
    @app_commands.describe(image="A PNG (ours or A1111's), or a JPEG/WebP with parameters")
    async def png_info(self, interaction: discord.Interaction, image: discord.Attachment) -> None:
        # Deferred first: a large download can outlast Discord's 3 s to answer.
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            text = await attachment_infotext(self.bot, image)
        except InvalidParams as unreadable:
            await interaction.followup.send(f"❌ {unreadable}", ephemeral=True)
            return
        await interaction.followup.send(embed=infotext_embed(text), ephemeral=True)

    @app_commands.command(name="reproduce", description="Run an image's parameters again")
    @app_commands.describe(image="A PNG (ours or A1111's) with generation parameters")
    async def reproduce(self, interaction: discord.Interaction, image: discord.Attachment) -> None:
        await interaction.response.defer(thinking=True)
        try:
            text = await attachment_infotext(self.bot, image)
            params, notes = self.bot.dreams.reproduce_params(text)
        except InvalidParams as bad:
            await DreamPresenter(interaction, 0.0).refused(f"❌ {bad}")
            return
        await start_job(self.bot, interaction, params, " ".join(notes))


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Info(bot))

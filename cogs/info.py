"""/png-info and /reproduce: the parameters inside an image, and running them again."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from cogs.dream import download, start_job
from cogs.ui.presenter import DreamPresenter
from engine.api.infotext import parse_infotext
from engine.api.params import InvalidParams
from engine.imaging.images import UnreadableImage, read_infotext

if TYPE_CHECKING:
    from bot.client.app import SDBot

FIELD_LIMIT = 1024
MAX_FIELDS = 24  # Discord allows 25 fields; one is the negative prompt
EMBED_LIMIT = 5900  # Discord's 6000 characters for all of an embed, with room for the footer


async def attachment_infotext(bot: SDBot, attachment: discord.Attachment) -> str:
    # Checked against the size Discord reports before a byte is downloaded.
    bot.images.check_size(attachment.size, "file")
    data = await download(attachment, "file")
    text = await asyncio.to_thread(read_infotext, data)
    if not text:
        raise UnreadableImage("That image carries no generation parameters.")
    return text


def _clip(text: str, limit: int = FIELD_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def infotext_embed(text: str) -> discord.Embed:
    info = parse_infotext(text)
    embed = discord.Embed(title="Parameters", description=_clip(info.prompt or "(no prompt)", 4000))
    if info.negative:
        embed.add_field(name="Negative", value=_clip(info.negative), inline=False)
    for key, value in list(info.values.items())[:MAX_FIELDS]:
        name, shown = _clip(key, 256), _clip(value or "—")
        if len(embed) + len(name) + len(shown) > EMBED_LIMIT:  # Discord refuses the whole embed
            embed.set_footer(text="More parameters did not fit.")
            break
        embed.add_field(name=name, value=shown)
    return embed


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

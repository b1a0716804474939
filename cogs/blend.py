"""/blend: two to five pictures mixed into one image, as Midjourney's /blend (issue 18)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.generation.imaging import Prepared
from bot.generation.options import DreamOptions
from cogs.ui.options import model_autocomplete, preset_size
from cogs.ui.starting import Uploads, start_from_uploads
from engine.api.image_prompts import BLEND_WEIGHT, MAX_IMAGE_WEIGHT, MIN_IMAGE_WEIGHT
from engine.api.params import MAX_SEED

if TYPE_CHECKING:
    from bot.client.app import SDBot

# Midjourney's /blend dimensions, as the bot's size presets (cogs/ui/options.py) make them
# for the chosen model.
DIMENSIONS = {"square": 1.0, "portrait": 2 / 3, "landscape": 3 / 2}
PICTURES = ("image1", "image2", "image3", "image4", "image5")
MAX_BLEND_PROMPT = 300  # a few words to steer the mix, not a prompt of its own


class Blend(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(name="blend", description="Mix two to five pictures into one image")
    @app_commands.describe(
        image1="The first picture",
        image2="The second picture",
        image3="A third picture (optional)",
        image4="A fourth picture (optional)",
        image5="A fifth picture (optional)",
        dimensions="The shape of the result: square, portrait (2:3) or landscape (3:2)",
        weight="How strongly the pictures guide the image (0-2, default 1)",
        prompt="A few words to steer the mix (optional)",
        seed="Seed for the noise; -1 or empty for a random one",
        model="Which model to use",
    )
    @app_commands.autocomplete(model=model_autocomplete)
    async def blend(
        self,
        interaction: discord.Interaction,
        image1: discord.Attachment,
        image2: discord.Attachment,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        image5: discord.Attachment | None = None,
        dimensions: Literal["square", "portrait", "landscape"] | None = None,
        weight: app_commands.Range[float, MIN_IMAGE_WEIGHT, MAX_IMAGE_WEIGHT] | None = None,
        prompt: app_commands.Range[str, 0, MAX_BLEND_PROMPT] | None = None,
        seed: app_commands.Range[int, -1, MAX_SEED] | None = None,
        model: str | None = None,
    ) -> None:
        options = DreamOptions(prompt or "", seed=seed, model=model)
        # The member's preferences and the server's defaults fill what was not given.
        filled = await self.bot.prefs.fill(
            options,
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
            with_size=dimensions is None,
        )
        options = filled.options
        requests = self.bot.images.prompts
        # Before anything is downloaded: refused in one sentence, privately.
        requests.check_available(options.model, "/blend")
        if dimensions is not None:
            spec = self.bot.models[options.model or self.bot.settings.default_model]
            options = replace(options, size=preset_size(spec, DIMENSIONS[dimensions]))
        pictures = (image1, image2, image3, image4, image5)
        uploads = dict(zip(PICTURES, pictures, strict=True))

        async def prepare(data: Uploads) -> Prepared:
            given = [(what, image) for what, image in data.items() if image is not None]
            chosen = BLEND_WEIGHT if weight is None else weight
            return Prepared(await requests.prepare(options, given, weight=chosen))

        await start_from_uploads(self.bot, interaction, uploads, prepare, dm=filled.dm)


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Blend(bot))

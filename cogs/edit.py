"""/edit (issue 18): change a member's picture by plain words ("make it winter"), with an
InstructPix2Pix model (engine/api/edits.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.generation.imaging import Prepared
from bot.generation.options import DreamOptions
from cogs.ui.starting import Uploads, start_from_uploads
from engine.api.params import (
    DEFAULT_IMAGE_CFG,
    MAX_CFG,
    MAX_COUNT,
    MAX_IMAGE_CFG,
    MAX_SEED,
    MAX_STEPS,
    MIN_IMAGE_CFG,
)

if TYPE_CHECKING:
    from bot.client.app import SDBot


class Edit(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(name="edit", description="Change a picture by plain words")
    @app_commands.describe(
        image="The picture to change",
        instruction="What to change, in plain words: make it winter, turn the cat into a tiger",
        image_cfg=(
            "How closely the result keeps the picture (A1111's Image CFG scale, "
            f"{MIN_IMAGE_CFG:g}-{MAX_IMAGE_CFG:g}; {DEFAULT_IMAGE_CFG:g})"
        ),
        cfg="How strongly it follows the instruction (CFG scale)",
        steps="Denoising steps",
        seed="Seed for the noise; -1 or empty for a random one",
        count="How many images",
    )
    async def edit(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        instruction: app_commands.Range[str, 1, 6000],
        image_cfg: app_commands.Range[float, MIN_IMAGE_CFG, MAX_IMAGE_CFG] | None = None,
        cfg: app_commands.Range[float, 0.0, MAX_CFG] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        seed: app_commands.Range[int, -1, MAX_SEED] | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
    ) -> None:
        # Before the picture is downloaded: a bot without an edit model, no words, a scale
        # out of range (Discord keeps to the range; a crafted request need not) are each
        # told in one sentence, and nothing is stored or charged.
        self.bot.images.check_edit(instruction, image_cfg)
        options = DreamOptions(instruction, seed=seed, steps=steps, cfg=cfg, count=count)
        filled = await self.bot.prefs.fill(
            options, user_id=interaction.user.id, guild_id=interaction.guild_id, with_size=False
        )

        async def prepare(data: Uploads) -> Prepared:
            picture = data["image"]
            assert picture is not None, "image is a required option"
            return await self.bot.images.edit(filled.options, picture, image_cfg)

        await start_from_uploads(self.bot, interaction, {"image": image}, prepare, dm=filled.dm)


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Edit(bot))

"""/interpolate (issue 18): an animation morphing between two prompts and/or two seeds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.generation.interpolation import InterpolateRequest, interpolation_params
from bot.generation.options import DreamOptions
from cogs.ui.options import (
    SAMPLER_CHOICES,
    SCHEDULE_CHOICES,
    SCHEDULER_DESCRIPTION,
    SizeTransformer,
    model_autocomplete,
)
from cogs.ui.starting import start_job
from engine.api.interpolation import MAX_FPS, MAX_FRAMES, MIN_FPS, MIN_FRAMES
from engine.api.params import MAX_CFG, MAX_SEED, MAX_STEPS

if TYPE_CHECKING:
    from bot.client.app import SDBot


class Interpolate(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="interpolate", description="An animation morphing between two prompts or seeds"
    )
    @app_commands.describe(
        prompt="What the first frame shows",
        to_prompt="What the last frame shows (empty: the same prompt, so give a second seed)",
        seed="The first frame's seed; -1 or empty for a random one",
        to_seed="The last frame's seed (-1: random; empty: the first seed)",
        frames=f"How many frames ({MIN_FRAMES}-{MAX_FRAMES}); each is priced as one image",
        fps=f"Frames per second ({MIN_FPS}-{MAX_FPS})",
        format="webp (default, small), gif (plays everywhere) or mp4",
        negative="What to avoid, in every frame",
        steps="Denoising steps (more is slower, often finer)",
        cfg="How closely to follow the prompts (CFG scale)",
        size="WIDTHxHEIGHT, multiples of 8, or a preset",
        sampler="Sampler, by its A1111 name (Euler or DPM++ 2M morph the most smoothly)",
        scheduler=SCHEDULER_DESCRIPTION,
        model="Which model to use",
    )
    @app_commands.choices(sampler=SAMPLER_CHOICES, scheduler=SCHEDULE_CHOICES)
    @app_commands.autocomplete(model=model_autocomplete)
    async def interpolate(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 6000],
        to_prompt: app_commands.Range[str, 0, 6000] | None = None,
        seed: app_commands.Range[int, -1, MAX_SEED] | None = None,
        to_seed: app_commands.Range[int, -1, MAX_SEED] | None = None,
        frames: app_commands.Range[int, MIN_FRAMES, MAX_FRAMES] | None = None,
        fps: app_commands.Range[int, MIN_FPS, MAX_FPS] | None = None,
        format: Literal["webp", "gif", "mp4"] | None = None,
        negative: app_commands.Range[str, 0, 6000] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        cfg: app_commands.Range[float, 0.0, MAX_CFG] | None = None,
        size: app_commands.Transform[tuple[int, int], SizeTransformer] | None = None,
        sampler: str | None = None,
        scheduler: str | None = None,
        model: str | None = None,
    ) -> None:
        options = DreamOptions(
            prompt, negative, seed, steps, cfg, size, sampler, model=model, schedule=scheduler
        )
        # The member's preferences and the server's defaults fill what was not typed.
        filled = await self.bot.prefs.fill(
            options, user_id=interaction.user.id, guild_id=interaction.guild_id
        )
        request = InterpolateRequest(to_prompt, to_seed, frames, fps, format)
        # Checked before deferring, so a mistake is answered privately and costs nothing.
        params = interpolation_params(
            self.bot.dreams, filled.options, request, interaction.filesize_limit
        )
        await interaction.response.defer(thinking=True)
        await start_job(self.bot, interaction, params, dm=filled.dm)


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Interpolate(bot))

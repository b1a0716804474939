"""/dream: text to image."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.generation.imaging import ControlRequest, Prepared
from bot.generation.options import DreamOptions
from bot.jobs.kinds import JobKind
from cogs.ui.buttons import view_factory
from cogs.ui.options import (
    HIRES_CHOICES,
    SAMPLER_CHOICES,
    SCHEDULE_CHOICES,
    SCHEDULER_DESCRIPTION,
    ControlType,
    HiresSizeTransformer,
    SizeTransformer,
    model_autocomplete,
    preset_autocomplete,
    usable_lora_autocomplete,
)
from cogs.ui.presenter import ChannelPresenter
from cogs.ui.starting import CONTROL_IMAGE, Uploads, start_from_uploads, start_job
from engine.api.params import (
    MAX_CFG,
    MAX_CLIP_SKIP,
    MAX_CONTROL_SCALE,
    MAX_COUNT,
    MAX_SEED,
    MAX_STEPS,
    MIN_CLIP_SKIP,
    GenerationParams,
    InvalidParams,
)

if TYPE_CHECKING:
    from bot.client.app import SDBot

DEFAULT_LORA_WEIGHT = 0.8
IMAGE_PROMPT = "image prompt"
STYLE_IMAGE = "style image"


class Dream(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        # Jobs restored after a restart have no interaction left: post in their channel.
        self.bot.scheduler.hear_restored(
            JobKind.GENERATE, partial(ChannelPresenter, self.bot, view=view_factory(self.bot))
        )

    async def cog_unload(self) -> None:
        self.bot.scheduler.hear_restored(JobKind.GENERATE, None)

    @app_commands.command(name="dream", description="Generate images from a text prompt")
    @app_commands.describe(
        prompt="What to draw",
        negative="What to avoid",
        seed="Seed for the noise; -1 or empty for a random one",
        steps="Denoising steps (more is slower, often finer)",
        cfg="How closely to follow the prompt (CFG scale)",
        size="WIDTHxHEIGHT, multiples of 8, or a preset",
        sampler="Sampler, by its A1111 name",
        scheduler=SCHEDULER_DESCRIPTION,
        count="How many images",
        model="Which model to use",
        clip_skip="Stop CLIP this many layers from the end (A1111 numbering; 2 for anime models)",
        syntax="a1111: (word:1.2) [word] BREAK; subprompt: dog:0.9 cyborg:0.3; auto: either",
        variation_seed="Blend in this seed's noise (-1: random)",
        variation_strength="How much of the variation seed (0-1); 0.15-0.25 keeps the picture",
        control_image="A picture whose edges (or a ready control map) pin the composition",
        control_type="How to read the control image (canny is computed from any picture)",
        control_weight="How strongly the control image holds (0-2)",
        preset="One of your /prefer presets; what you type here still wins",
        lora="A LoRA of yours or shared here (adds <lora:name:weight> to the prompt)",
        lora_weight="How strongly the LoRA applies (default 0.8)",
        hires="Hires fix: draw at the size, upscale the latents, then refine (A1111's Latent)",
        hires_denoise="How much the hires pass repaints (0-1, default 0.7)",
        hires_size="Hires fix to WIDTHxHEIGHT, not an upscale (a side of 0 keeps the aspect)",
        image_prompt="A picture to draw like (Midjourney's image prompt)",
        style_image="A picture whose style to take, not its content (Midjourney's --sref)",
    )
    @app_commands.choices(sampler=SAMPLER_CHOICES, scheduler=SCHEDULE_CHOICES)
    @app_commands.choices(hires=HIRES_CHOICES)
    @app_commands.autocomplete(
        model=model_autocomplete, preset=preset_autocomplete, lora=usable_lora_autocomplete
    )
    async def dream(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 6000],
        negative: app_commands.Range[str, 0, 6000] | None = None,
        seed: app_commands.Range[int, -1, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        cfg: app_commands.Range[float, 0.0, MAX_CFG] | None = None,
        size: app_commands.Transform[tuple[int, int], SizeTransformer] | None = None,
        sampler: str | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
        model: str | None = None,
        clip_skip: app_commands.Range[int, MIN_CLIP_SKIP, MAX_CLIP_SKIP] | None = None,
        syntax: Literal["a1111", "subprompt", "auto"] | None = None,
        variation_seed: app_commands.Range[int, -1, MAX_SEED] | None = None,
        variation_strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        control_image: discord.Attachment | None = None,
        control_type: ControlType | None = None,
        control_weight: app_commands.Range[float, 0.0, MAX_CONTROL_SCALE] | None = None,
        preset: app_commands.Range[str, 1, 100] | None = None,
        lora: app_commands.Range[str, 1, 64] | None = None,
        lora_weight: app_commands.Range[float, -2.0, 2.0] | None = None,
        scheduler: str | None = None,
        hires: float | None = None,
        hires_denoise: app_commands.Range[float, 0.0, 1.0] | None = None,
        hires_size: app_commands.Transform[tuple[int, int], HiresSizeTransformer] | None = None,
        image_prompt: discord.Attachment | None = None,
        style_image: discord.Attachment | None = None,
    ) -> None:
        if lora is not None:
            prompt = with_lora_tag(
                prompt, lora, DEFAULT_LORA_WEIGHT if lora_weight is None else lora_weight
            )
        dreams = self.bot.dreams
        # Checked before deferring (microseconds), so a mistake gets an ephemeral answer and
        # never a public "thinking" message.
        options = DreamOptions(
            prompt,
            negative,
            seed,
            steps,
            cfg,
            size,
            sampler,
            count,
            model,
            clip_skip,
            syntax,
            variation_seed,
            variation_strength,
            schedule=scheduler,
            hires=hires,
            hires_denoise=hires_denoise,
            hires_size=hires_size,
        )
        # The member's preferences and the server's defaults fill what was not typed.
        filled = await self.bot.prefs.fill(
            options, user_id=interaction.user.id, guild_id=interaction.guild_id, preset=preset
        )
        options = filled.options
        params = dreams.build_params(options)
        pictures = {IMAGE_PROMPT: image_prompt, STYLE_IMAGE: style_image}
        if image_prompt is not None or style_image is not None:
            if control_image is not None:
                raise InvalidParams("Image prompts and a control image cannot be used together.")
            await self._start_with_pictures(interaction, options, params, pictures, dm=filled.dm)
            return
        if control_image is None:
            if control_type is not None or control_weight is not None:
                raise InvalidParams("A control type or weight needs a control image.")
            await interaction.response.defer(thinking=True)
            await start_job(self.bot, interaction, params, dm=filled.dm)
            return

        async def prepare(data: Uploads) -> Prepared:
            image = data[CONTROL_IMAGE]
            assert image is not None
            request = ControlRequest(image, control_type, control_weight)
            return await self.bot.images.control_for_dream(options, request)

        uploads = {CONTROL_IMAGE: control_image}
        await start_from_uploads(self.bot, interaction, uploads, prepare, dm=filled.dm)

    async def _start_with_pictures(
        self,
        interaction: discord.Interaction,
        options: DreamOptions,
        params: GenerationParams,
        pictures: dict[str, discord.Attachment | None],
        *,
        dm: bool | None,
    ) -> None:
        """/dream with image prompts: the model's IP-Adapter checked before anything is
        downloaded, then the pictures stored with the job. Their weight is the default
        (0.6): /dream has no room for a 26th option; /blend takes one."""
        requests = self.bot.images.prompts
        requests.check_available(params.model)

        async def prepare(data: Uploads) -> Prepared:
            prompts, styles = _given(data, IMAGE_PROMPT), _given(data, STYLE_IMAGE)
            return Prepared(await requests.prepare(options, prompts, styles, None))

        await start_from_uploads(self.bot, interaction, pictures, prepare, dm=dm)


def _given(data: Uploads, what: str) -> list[tuple[str, bytes]]:
    picture = data.get(what)
    return [(what, picture)] if picture is not None else []


def with_lora_tag(prompt: str, name: str, weight: float) -> str:
    """The prompt with A1111's tag for the LoRA, so rerolls and the PNG carry it too. The
    name as chosen (a folder file keeps its case and spaces, as A1111's tags name files);
    only what would end the tag early is taken out."""
    return f"{prompt} <lora:{name.replace(':', '').replace('>', '').strip()}:{weight:g}>"


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Dream(bot))

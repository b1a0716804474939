"""/img2img, /inpaint, /outpaint and /upscale: jobs that start from a member's picture."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.generation.imaging import ControlRequest, Prepared
from bot.generation.options import DreamOptions
from cogs.ui.options import (
    SAMPLER_CHOICES,
    SCHEDULE_CHOICES,
    SCHEDULER_DESCRIPTION,
    ControlType,
    model_autocomplete,
)
from cogs.ui.starting import CONTROL_IMAGE, Uploads, start_from_uploads
from engine.api.params import (
    MAX_CFG,
    MAX_CONTROL_SCALE,
    MAX_COUNT,
    MAX_INPAINT_PADDING,
    MAX_MASK_BLUR,
    MAX_OUTPAINT,
    MAX_SEED,
    MAX_STEPS,
    MAX_UPSCALE,
    MIN_UPSCALE,
    InvalidParams,
)

if TYPE_CHECKING:
    from bot.client.app import SDBot

log = logging.getLogger(__name__)


COMMON_DESCRIPTIONS = {
    "negative": "What to avoid",
    "seed": "Seed for the noise; -1 or empty for a random one",
    "steps": "Denoising steps (only `strength` of them run)",
    "cfg": "How closely to follow the prompt (CFG scale)",
    "sampler": "Sampler, by its A1111 name",
    "scheduler": SCHEDULER_DESCRIPTION,
    "count": "How many images",
    "model": "Which model to use",
}


class Images(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    async def _defaults(
        self, interaction: discord.Interaction, options: DreamOptions
    ) -> tuple[DreamOptions, bool]:
        """The member's preferences and the server's defaults (the picture sets the size),
        and whether they want results by DM."""
        filled = await self.bot.prefs.fill(
            options, user_id=interaction.user.id, guild_id=interaction.guild_id, with_size=False
        )
        return filled.options, filled.dm

    @app_commands.command(name="img2img", description="Repaint a picture of yours from a prompt")
    @app_commands.describe(
        image="The picture to start from",
        prompt="What it should become",
        strength="How much to change: 0 keeps the picture, 1 ignores it",
        control_image="A picture whose edges (or a ready control map) pin the composition",
        control_type="How to read the control image (canny is computed from any picture)",
        control_weight="How strongly the control image holds (0-2)",
        **COMMON_DESCRIPTIONS,
    )
    @app_commands.choices(sampler=SAMPLER_CHOICES, scheduler=SCHEDULE_CHOICES)
    @app_commands.autocomplete(model=model_autocomplete)
    async def img2img(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, 6000],
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        negative: app_commands.Range[str, 0, 6000] | None = None,
        seed: app_commands.Range[int, -1, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        cfg: app_commands.Range[float, 0.0, MAX_CFG] | None = None,
        sampler: str | None = None,
        scheduler: str | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
        model: str | None = None,
        control_image: discord.Attachment | None = None,
        control_type: ControlType | None = None,
        control_weight: app_commands.Range[float, 0.0, MAX_CONTROL_SCALE] | None = None,
    ) -> None:
        options = DreamOptions(
            prompt, negative, seed, steps, cfg, None, sampler, count, model, schedule=scheduler
        )
        options, dm = await self._defaults(interaction, options)
        _control_needs_image(control_image, control_type, control_weight)

        async def prepare(data: Uploads) -> Prepared:
            control = _control(data, control_type, control_weight)
            return await self.bot.images.img2img(
                options, _required(data, "image"), strength, control
            )

        await start_from_uploads(
            self.bot, interaction, {"image": image, CONTROL_IMAGE: control_image}, prepare, dm=dm
        )

    @app_commands.command(
        name="inpaint", description="Repaint part of a picture: white in the mask"
    )
    @app_commands.describe(
        image="The picture (transparent pixels are repainted when there is no mask)",
        prompt="What to paint in the masked area",
        mask="White where the picture should change, black where it stays",
        strength="How much the masked area changes (0-1)",
        mask_blur="Soften the mask's edge by this many pixels",
        only_masked="Paint the masked area at full resolution, then fit it back (small edits)",
        padding="With only_masked: pixels of context around the mask",
        **COMMON_DESCRIPTIONS,
    )
    @app_commands.choices(sampler=SAMPLER_CHOICES, scheduler=SCHEDULE_CHOICES)
    @app_commands.autocomplete(model=model_autocomplete)
    async def inpaint(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, 6000],
        mask: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        mask_blur: app_commands.Range[int, 0, MAX_MASK_BLUR] | None = None,
        only_masked: bool = False,
        padding: app_commands.Range[int, 0, MAX_INPAINT_PADDING] | None = None,
        negative: app_commands.Range[str, 0, 6000] | None = None,
        seed: app_commands.Range[int, -1, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        cfg: app_commands.Range[float, 0.0, MAX_CFG] | None = None,
        sampler: str | None = None,
        scheduler: str | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
        model: str | None = None,
    ) -> None:
        options = DreamOptions(
            prompt, negative, seed, steps, cfg, None, sampler, count, model, schedule=scheduler
        )
        options, dm = await self._defaults(interaction, options)

        async def prepare(data: Uploads) -> Prepared:
            return await self.bot.images.inpaint(
                options,
                _required(data, "image"),
                data["mask"],
                denoise=strength,
                mask_blur=mask_blur,
                only_masked=only_masked,
                padding=padding,
            )

        await start_from_uploads(
            self.bot, interaction, {"image": image, "mask": mask}, prepare, dm=dm
        )

    @app_commands.command(name="outpaint", description="Grow a picture beyond its edges")
    @app_commands.describe(
        image="The picture to grow",
        prompt="What the whole, larger picture shows",
        left="Pixels to add on the left",
        right="Pixels to add on the right",
        up="Pixels to add at the top",
        down="Pixels to add at the bottom",
        strength="How freely the new area is painted (0-1; high fills it best)",
        **COMMON_DESCRIPTIONS,
    )
    @app_commands.choices(sampler=SAMPLER_CHOICES, scheduler=SCHEDULE_CHOICES)
    @app_commands.autocomplete(model=model_autocomplete)
    async def outpaint(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, 6000],
        left: app_commands.Range[int, 0, MAX_OUTPAINT] = 0,
        right: app_commands.Range[int, 0, MAX_OUTPAINT] = 0,
        up: app_commands.Range[int, 0, MAX_OUTPAINT] = 0,
        down: app_commands.Range[int, 0, MAX_OUTPAINT] = 0,
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        negative: app_commands.Range[str, 0, 6000] | None = None,
        seed: app_commands.Range[int, -1, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        cfg: app_commands.Range[float, 0.0, MAX_CFG] | None = None,
        sampler: str | None = None,
        scheduler: str | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
        model: str | None = None,
    ) -> None:
        if not any((left, right, up, down)):
            raise InvalidParams(
                "Say how far to grow the picture: left, right, up or down, in pixels."
            )
        options = DreamOptions(
            prompt, negative, seed, steps, cfg, None, sampler, count, model, schedule=scheduler
        )
        options, dm = await self._defaults(interaction, options)

        async def prepare(data: Uploads) -> Prepared:
            pads = (left, right, up, down)
            return await self.bot.images.outpaint(options, _required(data, "image"), pads, strength)

        await start_from_uploads(self.bot, interaction, {"image": image}, prepare, dm=dm)

    @app_commands.command(name="upscale", description="Make a picture larger, with new detail")
    @app_commands.describe(
        image="The picture to enlarge (its own prompt is used when it carries one)",
        factor="How many times larger",
        strength="How much new detail: 0.2-0.4 keeps the picture",
        prompt="What the picture shows (optional)",
        negative="What to avoid",
        seed="Seed for the detail pass",
        steps="Denoising steps (only `strength` of them run)",
        model="Which model paints the detail",
    )
    @app_commands.autocomplete(model=model_autocomplete)
    async def upscale(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        factor: app_commands.Range[float, MIN_UPSCALE, MAX_UPSCALE] | None = None,
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        prompt: app_commands.Range[str, 0, 6000] | None = None,
        negative: app_commands.Range[str, 0, 6000] | None = None,
        seed: app_commands.Range[int, -1, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        model: str | None = None,
    ) -> None:
        options = DreamOptions(prompt or "", negative, seed, steps, model=model)
        options, dm = await self._defaults(interaction, options)

        async def prepare(data: Uploads) -> Prepared:
            return await self.bot.images.upscale(
                options, _required(data, "image"), factor, strength
            )

        await start_from_uploads(self.bot, interaction, {"image": image}, prepare, dm=dm)


def _required(data: Uploads, what: str) -> bytes:
    value = data[what]
    assert value is not None, f"{what} is a required option"
    return value


def _control_needs_image(
    image: discord.Attachment | None, control_type: str | None, weight: float | None
) -> None:
    if image is None and (control_type is not None or weight is not None):
        raise InvalidParams("A control type or weight needs a control image.")


def _control(
    data: Uploads, control_type: str | None, weight: float | None
) -> ControlRequest | None:
    image = data.get(CONTROL_IMAGE)
    return ControlRequest(image, control_type, weight) if image is not None else None


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Images(bot))

"""Options that several commands take: the size transformer, the autocompletes for models,
presets and LoRAs, and the choices for samplers and schedules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands

from bot.training.loras import FOLDER_OWNER
from engine.api.checks import check_size, parse_size
from engine.api.hires import parse_hires_size
from engine.api.samplers import SAMPLERS, SCHEDULES
from engine.api.specs import ModelSpec

if TYPE_CHECKING:
    from bot.client.app import SDBot

# Aspect ratios offered in the size autocomplete, scaled to each model's native size.
SIZE_PRESETS: tuple[tuple[str, float], ...] = (
    ("square", 1.0),
    ("portrait 2:3", 2 / 3),
    ("landscape 3:2", 3 / 2),
    ("portrait 3:4", 3 / 4),
    ("landscape 4:3", 4 / 3),
    ("tall 9:16", 9 / 16),
    ("wide 16:9", 16 / 9),
)
MAX_CHOICES = 25  # Discord's limit for autocomplete results
ControlType = Literal[
    "canny", "depth", "openpose", "scribble", "lineart", "softedge", "seg", "normal"
]


def preset_size(spec: ModelSpec, aspect: float) -> tuple[int, int]:
    """The native pixel count at `aspect`, rounded to multiples of 64 as trained sizes are."""
    native_w, native_h = spec.size_default()
    area = native_w * native_h
    width = round((area * aspect) ** 0.5 / 64) * 64
    height = round((area / aspect) ** 0.5 / 64) * 64
    return width, height


def _model_for(interaction: discord.Interaction) -> ModelSpec:
    bot: SDBot = interaction.client  # type: ignore[assignment]
    models = bot.models
    chosen = getattr(interaction.namespace, "model", None)
    return models.get(chosen or "", models[bot.settings.default_model])


class SizeTransformer(app_commands.Transformer):
    """`768x512` (typed, or picked from presets that fit the chosen model) to (width, height)."""

    async def transform(self, interaction: discord.Interaction, value: str) -> tuple[int, int]:
        width, height = parse_size(value)
        check_size(width, height, _model_for(interaction))
        return width, height

    async def autocomplete(  # type: ignore[override]
        self, interaction: discord.Interaction, value: str
    ) -> list[app_commands.Choice[str]]:
        spec = _model_for(interaction)
        choices = []
        for label, aspect in SIZE_PRESETS:
            width, height = preset_size(spec, aspect)
            if width * height <= spec.pixel_cap():
                text = f"{width}x{height}"
                choices.append(app_commands.Choice(name=f"{text} ({label})", value=text))
        typed = value.strip().lower()
        return [choice for choice in choices if typed in choice.name.lower()][:MAX_CHOICES]


class HiresSizeTransformer(app_commands.Transformer):
    """Hires fix's target size: `1024x1536`, or `1024x0` for a side that follows the aspect."""

    async def transform(self, interaction: discord.Interaction, value: str) -> tuple[int, int]:
        return parse_hires_size(value)


async def model_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    bot: SDBot = interaction.client  # type: ignore[assignment]
    typed = current.strip().lower()
    choices = []
    for spec in bot.models.values():
        label = f"{spec.name} — {spec.note}" if spec.note else spec.name
        if typed in label.lower():
            choices.append(app_commands.Choice(name=label[:100], value=spec.name))
    return choices[:MAX_CHOICES]


async def preset_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """The member's own presets."""
    bot: SDBot = interaction.client  # type: ignore[assignment]
    typed = current.strip().lower()
    names = await bot.prefs.names(interaction.user.id)
    return [app_commands.Choice(name=n, value=n) for n in names if typed in n][:MAX_CHOICES]


async def usable_lora_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """The member's own LoRAs, then those shared in this server, then the owner's folder
    of downloaded files (for /dream)."""
    bot: SDBot = interaction.client  # type: ignore[assignment]
    usable = await bot.library.usable(interaction.user.id, interaction.guild_id)
    typed = current.strip().lower()
    choices = []
    for lora in usable:
        if lora.method != "lora" or typed not in lora.name.lower():  # folder files: any case
            continue
        whose = _whose(lora.owner_id, interaction.user.id)
        label = f"{lora.name} ({whose}, {lora.class_word or 'no class'}, {lora.base_model})"
        choices.append(app_commands.Choice(name=label[:100], value=lora.name))
    return choices[:MAX_CHOICES]


def _whose(owner_id: int, member_id: int) -> str:
    if owner_id == member_id:
        return "yours"
    return "LoRA folder" if owner_id == FOLDER_OWNER else "shared"


SAMPLER_CHOICES = [app_commands.Choice(name=name, value=name) for name in SAMPLERS]
# A1111's "Schedule type" (issue 16); Automatic is each sampler's own, as in A1111.
SCHEDULE_CHOICES = [app_commands.Choice(name=name, value=name) for name in SCHEDULES]
SCHEDULER_DESCRIPTION = (
    "A1111's schedule type; Automatic is the sampler's own (Karras for DPM++ 2M)"
)
# Hires fix (issue 16): A1111's common upscales; the result must fit the model's pixel cap.
HIRES_CHOICES = [app_commands.Choice(name=f"{scale:g}x", value=scale) for scale in (1.5, 2.0)]

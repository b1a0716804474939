"""/dream: text to image."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.generation.imaging import ControlRequest, Prepared
from bot.generation.options import DreamOptions
from bot.jobs.contracts import JobRefused
from cogs.loras import usable_lora_autocomplete
from cogs.ui.buttons import view_factory
from cogs.ui.context import DirectPresenter, requester_of
from cogs.ui.presenter import ChannelPresenter, DreamPresenter, previews_allowed
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
    check_size,
    parse_size,
)
from engine.api.samplers import SAMPLERS, SCHEDULES
from engine.api.specs import ModelSpec
from engine.api.training_params import sanitize_name

if TYPE_CHECKING:
    from bot.client.app import SDBot

log = logging.getLogger(__name__)

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
DEFAULT_LORA_WEIGHT = 0.8
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
    models = bot.dreams.models
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


async def model_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    bot: SDBot = interaction.client  # type: ignore[assignment]
    typed = current.strip().lower()
    choices = []
    for spec in bot.dreams.models.values():
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


SAMPLER_CHOICES = [app_commands.Choice(name=name, value=name) for name in SAMPLERS]
# A1111's "Schedule type" (issue 16); Automatic is each sampler's own, as in A1111.
SCHEDULE_CHOICES = [app_commands.Choice(name=name, value=name) for name in SCHEDULES]
SCHEDULER_DESCRIPTION = (
    "A1111's schedule type; Automatic is the sampler's own (Karras for DPM++ 2M)"
)


class Dream(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        # Jobs restored after a restart have no interaction left: post in their channel.
        self.bot.dreams.fallback_observer = partial(
            ChannelPresenter, self.bot, view=view_factory(self.bot)
        )

    async def cog_unload(self) -> None:
        self.bot.dreams.fallback_observer = None

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
    )
    @app_commands.choices(sampler=SAMPLER_CHOICES, scheduler=SCHEDULE_CHOICES)
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
        )
        # The member's preferences and the server's defaults fill what was not typed.
        filled = await self.bot.prefs.fill(
            options, user_id=interaction.user.id, guild_id=interaction.guild_id, preset=preset
        )
        options = filled.options
        params = dreams.build_params(options)
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


Uploads = dict[str, bytes | None]  # an attachment's bytes by what it is, None when absent
CONTROL_IMAGE = "control image"


async def start_from_uploads(
    bot: SDBot,
    interaction: discord.Interaction,
    uploads: Mapping[str, discord.Attachment | None],
    prepare: Callable[[Uploads], Awaitable[Prepared]],
    *,
    dm: bool | None = None,
) -> None:
    """A job that starts from attachments: sizes checked, defer, download, prepare, queue.

    A file over the size limit is refused before a byte is downloaded (an ephemeral
    answer, no "thinking" message); a bad picture after the defer is told privately.
    """
    for what, attachment in uploads.items():
        if attachment is not None:
            bot.images.check_size(attachment.size, what)
    await interaction.response.defer(thinking=True)
    try:
        data: Uploads = {}
        for what, attachment in uploads.items():
            data[what] = await download(attachment, what) if attachment else None
        prepared = await prepare(data)
    except InvalidParams as bad:
        await DreamPresenter(interaction, 0.0).refused(f"❌ {bad}")
        return
    await start_job(bot, interaction, prepared.params, prepared.note, dm=dm)


async def start_job(
    bot: SDBot,
    interaction: discord.Interaction,
    params: GenerationParams,
    note: str = "",
    *,
    dm: bool | None = None,
) -> None:
    """Submit checked parameters for a deferred interaction and show the job's progress.

    `note` is said with the queue position (for example what /reproduce could not honour).
    `dm`: deliver the result by DM; None follows the member's preference.
    """
    if dm is None:
        dm = (await bot.prefs.defaults(interaction.user.id)).dm
    presenter_type = DirectPresenter if dm else DreamPresenter
    presenter = presenter_type(
        interaction, bot.settings.progress_interval, note, view=view_factory(bot)
    )
    requester = requester_of(
        interaction.user, interaction.channel, is_admin=bot.is_admin(interaction.user)
    )
    presenter.previews = previews_allowed(bot.settings, requester.age_restricted)
    try:
        ticket = await bot.dreams.submit(
            params,
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            interaction_id=interaction.id,
            observer=presenter,
            requester=requester,
            private=dm,
        )
    except (JobRefused, InvalidParams) as refused:
        await presenter.refused(f"❌ {refused}")
        return
    if ticket.note:  # what the server's rules changed, shown while it waits and with the result
        presenter.note = " ".join(part for part in (presenter.note, ticket.note) if part)
    message_id = await presenter.queued(ticket)
    if message_id is not None:
        await bot.dreams.set_message(ticket.job.id, message_id)


def with_lora_tag(prompt: str, name: str, weight: float) -> str:
    """The prompt with A1111's tag for the LoRA, so rerolls and the PNG carry it too."""
    return f"{prompt} <lora:{sanitize_name(name)}:{weight:g}>"


async def download(attachment: discord.Attachment, what: str) -> bytes:
    """An attachment's bytes; its size was checked against the limit before this."""
    try:
        return await attachment.read()
    except discord.HTTPException as error:
        log.info("could not download attachment %s (%s)", attachment.id, error)
        raise InvalidParams(f"I could not download the {what}; send it again.") from None


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Dream(bot))

"""What a job's messages say and carry: the result's embed, its files under Discord's limits,
and the short texts (a job in one line, a price, a failure) that every message shares."""

from __future__ import annotations

import io

import discord

from bot.generation.actions import Action
from bot.jobs.contracts import JobOutcome, StoredImage
from data.jobs import Job
from engine.api.params import GenerationParams
from engine.api.samplers import AUTOMATIC, resolved_schedule
from engine.imaging.animation import encode_animation
from engine.imaging.images import EncodedImage, fit_to_limit

# Discord: 25 MiB per request in all, whatever a single file may be.
REQUEST_LIMIT = 25 * 1024 * 1024
# Discord's upload limit for a server without boosts; used where no interaction says more.
DEFAULT_FILE_LIMIT = 10 * 1024 * 1024
FIELD_LIMIT = 1024
DESCRIPTION_LIMIT = 4096

MODE_TITLES = {
    "txt2img": "Dream",
    "img2img": "Image to image",
    "inpaint": "Inpainting",
    "outpaint": "Outpainting",
    "upscale": "Upscale",
    "edit": "Edit",
    "interpolate": "Interpolation",
}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def result_embed(
    outcome: JobOutcome, requester: discord.abc.User | None, note: str = ""
) -> discord.Embed:
    params = outcome.params
    embed = discord.Embed(description=_clip(params.prompt, DESCRIPTION_LIMIT), colour=0x5865F2)
    title = MODE_TITLES.get(params.mode, params.mode)
    if outcome.job.action and outcome.job.parent_id is not None:
        title = f"{title} ({action_name(outcome.job.action)} of job {outcome.job.parent_id})"
    if requester is not None:
        embed.set_author(name=f"{title} for {requester.display_name}")
    else:
        embed.set_author(name=title)
    if params.negative:
        embed.add_field(name="Negative", value=_clip(params.negative, FIELD_LIMIT), inline=False)
    seeds = ", ".join(dict.fromkeys(str(image.seed) for image in outcome.images))
    embed.add_field(name="Seed" if "," not in seeds else "Seeds", value=seeds)
    if params.has_variation:
        variations = ", ".join(str(image.variation_seed) for image in outcome.images)
        embed.add_field(name="Variation seed", value=variations)
        embed.add_field(name="Variation strength", value=f"{params.variation_strength:g}")
    if params.clip_skip != 1:
        embed.add_field(name="Clip skip", value=str(params.clip_skip))
    embed.add_field(name="Steps", value=str(params.steps))
    embed.add_field(name="Sampler", value=_sampler_text(params))
    embed.add_field(name="CFG", value=f"{params.cfg:g}")
    embed.add_field(name="Size", value=params.size)
    embed.add_field(name="Model", value=params.model)
    if params.mode == "edit":  # it runs from noise: the picture's hold is its image CFG
        embed.add_field(name="Image CFG", value=f"{params.image_cfg:g}")
    elif params.mode == "interpolate":
        add_interpolation_fields(embed, params)
    elif params.mode != "txt2img":
        embed.add_field(name="Denoising", value=f"{params.denoise:g}")
    if params.mode == "upscale":
        embed.add_field(name="Upscale", value=f"{params.upscale:g}x")
    if params.control_type is not None:
        embed.add_field(name="Control", value=f"{params.control_type} ({params.control_scale:g})")
    if params.has_image_prompts:
        embed.add_field(name="Image prompts", value=_image_prompts_text(params))
    embed.add_field(name="Time", value=f"{outcome.run_seconds:.1f}s")
    if note:
        embed.add_field(name="Note", value=_clip(note, FIELD_LIMIT), inline=False)
    footer = f"job {outcome.job.id} · cost {credits_text(outcome.job.cost)}"
    if outcome.balance is not None:
        footer += f" · balance {outcome.balance}"
    embed.set_footer(text=footer)
    return embed


def action_name(value: str) -> str:
    """ "Zoom out 2x" for a job's stored action "zoom2"; a name this version lacks as is."""
    try:
        return Action(value).label.lower()
    except ValueError:
        return value


def encode_for_upload(images: list[StoredImage], file_limit: int) -> list[EncodedImage]:
    """Every image, each under the per-file limit and all together under the request limit."""
    per_file = min(file_limit, REQUEST_LIMIT // max(len(images), 1))
    return [fit_to_limit(image.png, image.infotext, per_file) for image in images]


def add_interpolation_fields(embed: discord.Embed, params: GenerationParams) -> None:
    """An interpolation's other end and how it plays."""
    if params.prompt_to is not None:
        embed.add_field(name="To", value=_clip(params.prompt_to, FIELD_LIMIT), inline=False)
    if params.seed_to is not None:
        embed.add_field(name="To seed", value=str(params.seed_to))
    embed.add_field(name="Frames", value=f"{params.frames} at {params.fps} fps")


def result_files(
    job_id: int,
    images: list[StoredImage],
    file_limit: int,
    params: GenerationParams | None = None,
) -> list[discord.File]:
    """The files of a result's message; an interpolation's (`params`) is its animation."""
    if params is not None and params.mode == "interpolate":
        return animation_files(job_id, images, file_limit, params)
    encoded = encode_for_upload(images, file_limit)
    return [
        # Discord hides a file whose name starts SPOILER_ until it is clicked.
        png_file(
            item.data,
            f"{'SPOILER_' if image.spoiler else ''}{job_id}-{idx}-{image.seed}.{item.extension}",
        )
        for idx, (image, item) in enumerate(zip(images, encoded, strict=True))
    ]


def animation_files(
    job_id: int,
    images: list[StoredImage],
    file_limit: int,
    params: GenerationParams,
) -> list[discord.File]:
    """The frames as one animation, then the first frame's PNG, whose infotext /reproduce
    and A1111's PNG Info read. Together under the request limit; the animation shrinks to
    fit what is left (engine/imaging/animation.py), the PNG is never the one dropped."""
    if not images:
        return []
    # One flagged frame hides the whole animation behind Discord's cover.
    spoiler = any(image.spoiler for image in images)
    pngs = [image.png for image in images]
    return frames_as_files(job_id, pngs, images[0].infotext, file_limit, params, spoiler)


def frames_as_files(
    job_id: int,
    pngs: list[bytes],
    infotext: str,
    file_limit: int,
    params: GenerationParams,
    spoiler: bool = False,
) -> list[discord.File]:
    """An interpolation's animation and its first frame, as files of one message."""
    first = fit_to_limit(pngs[0], infotext, file_limit)
    room = min(file_limit, REQUEST_LIMIT - len(first.data))
    animation = encode_animation(pngs, params.animation, params.fps, room, infotext)
    name = f"{'SPOILER_' if spoiler else ''}{job_id}-{params.seed}"
    return [
        png_file(animation.data, f"{name}-{len(pngs)}-frames.{animation.extension}"),
        png_file(first.data, f"{name}-first.{first.extension}"),
    ]


def png_file(data: bytes, filename: str) -> discord.File:
    return discord.File(io.BytesIO(data), filename=filename)


def public_failure(job: Job, refunded: int) -> str:
    """What the channel may read of a failure the member could not be told privately: the
    job and the refund, not the reason (which may quote their prompt)."""
    refund = f" {credits_text(refunded)} refunded." if refunded else ""
    return f"job {job.id} could not be finished.{refund} Open your DMs to hear why."


def credits_text(amount: int) -> str:
    return f"{amount} credit" if amount == 1 else f"{amount} credits"


def failure_text(message: str, refunded: int) -> str:
    sentence = message if message.endswith((".", "!", "?")) else message + "."
    refund = f" Your {credits_text(refunded)} {'was' if refunded == 1 else 'were'} refunded."
    return f"❌ {sentence}{refund if refunded else ''}"


def describe(params: GenerationParams) -> str:
    # An interpolation's images are its frames.
    amount = f"{params.frames} frames" if params.mode == "interpolate" else f"{params.count}×"
    return (
        f"{amount} {params.size}, {params.steps} steps, {_sampler_text(params)}, "
        f"CFG {params.cfg:g}, seed {params.seed}, {params.model}"
    )


def _sampler_text(params: GenerationParams) -> str:
    """`DPM++ 2M Karras`: the sampler and the schedule that ran, as members say it."""
    schedule = resolved_schedule(params.sampler, params.schedule)
    return params.sampler if schedule == AUTOMATIC else f"{params.sampler} {schedule}"


def _image_prompts_text(params: GenerationParams) -> str:
    """`2 (weight 1)`, `1 style (weight 0.6)`: how many pictures guided, and how strongly."""
    parts = []
    if params.image_prompts:
        parts.append(str(len(params.image_prompts)))
    if params.style_images:
        parts.append(f"{len(params.style_images)} style")
    return f"{' + '.join(parts)} (weight {params.image_weight:g})"

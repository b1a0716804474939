"""/interpolate's request (issue 18) into checked parameters: the member's two ends, frames
and format on top of /dream's options, and whether the animation can fit the upload limit.

The engine makes the frames (engine/pipelines/interpolate.py); the bot assembles them into
the animation when it posts them (cogs/ui/rendering.py, engine/imaging/animation.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bot.generation.options import Checked, DreamOptions, random_seed
from bot.generation.service import DreamService
from engine.api.interpolation import DEFAULT_FPS, DEFAULT_FRAMES, INTERPOLATE
from engine.api.params import GenerationParams, InvalidParams
from engine.imaging.animation import fits_upload, mp4_available

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class InterpolateRequest:
    """What a member typed beyond /dream's options; None means the default."""

    prompt_to: str | None = None
    seed_to: int | None = None  # -1: a random second seed
    frames: int | None = None
    fps: int | None = None
    animation: str | None = None


def interpolation_params(
    dreams: DreamService, options: DreamOptions, request: InterpolateRequest, file_limit: int
) -> Checked:
    """The job's parameters, checked once; InvalidParams names the first problem, and that
    the animation would not fit a `file_limit` upload."""
    prompt_to = (request.prompt_to or "").strip() or None
    seed_to = request.seed_to
    if seed_to is not None and seed_to < 0:
        seed_to = random_seed()
    params = dreams.build_params(
        replace(options, count=1),
        mode=INTERPOLATE,
        prompt_to=prompt_to,
        seed_to=seed_to,
        frames=request.frames if request.frames is not None else DEFAULT_FRAMES,
        fps=request.fps if request.fps is not None else DEFAULT_FPS,
        animation=request.animation or "webp",
    )
    check_upload(params, file_limit)
    return params


def check_upload(params: GenerationParams, file_limit: int) -> None:
    """MP4 needs PyAV; every format must be able to fit Discord's upload limit."""
    if params.animation == "mp4" and not mp4_available():
        raise InvalidParams("MP4 needs the PyAV package, which this bot lacks: choose WebP or GIF.")
    if not fits_upload(params.frames, params.width, params.height, params.animation, file_limit):
        raise InvalidParams(
            f"A {params.animation.upper()} of {params.frames} frames at {params.size} would not "
            f"fit Discord's {file_limit / MIB:g} MiB upload limit: choose fewer frames, a smaller "
            "size or another format."
        )


def rerolled(params: GenerationParams) -> GenerationParams:
    """Reroll: new seeds at both ends (one new seed when only the prompts differ)."""
    seed_to = random_seed() if params.seed_to is not None else None
    return replace(params, seed=random_seed(), seed_to=seed_to)

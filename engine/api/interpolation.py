"""/interpolate (issue 18) as parameters: where each frame lies between the two ends, which
seed's generator it steps with, and the one check. No torch here; the frames are made in
engine/pipelines/interpolate.py.

As in the original Stable Diffusion demos, frame i of n sits at t = i / (n - 1): its prompt
embeddings are the two prompts' lerped at t, its starting noise the two seeds' slerped at t,
so frame 0 is the /dream image of (prompt, seed) and the last one that of (prompt_to, seed_to).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.api.prompt_schedule import is_plain_and, parse_prompt, split_and
from engine.api.prompt_syntax import resolve_syntax, weight_problem

if TYPE_CHECKING:
    from engine.api.params import GenerationParams

INTERPOLATE = "interpolate"
MIN_FRAMES, MAX_FRAMES = 4, 48
DEFAULT_FRAMES = 16
MIN_FPS, MAX_FPS = 1, 30
DEFAULT_FPS = 8
# Animated WebP first: Discord animates it inline, and it is several times smaller than a
# GIF of the same frames. MP4 (H.264 through PyAV's bundled FFmpeg) is the smallest of all.
ANIMATION_FORMATS = ("webp", "gif", "mp4")
LORA_TAG = "<lora:"


def frame_positions(frames: int) -> list[float]:
    """Each frame's place between the ends, 0 to 1 inclusive."""
    return [index / (frames - 1) for index in range(frames)]


def end_seed(params: GenerationParams) -> int:
    """The seed of the last frame: `seed_to`, or the job's seed when only prompts differ."""
    return params.seed if params.seed_to is None else params.seed_to


def end_prompt(params: GenerationParams) -> str:
    """The prompt of the last frame: `prompt_to`, or the job's prompt when only seeds differ."""
    return params.prompt if params.prompt_to is None else params.prompt_to


def stepping_seed(params: GenerationParams, position: float) -> int:
    """The seed whose generator steps a frame (ancestral and SDE samplers draw noise at every
    step): the nearer end's, so both ends are exactly their /dream images. Deterministic
    samplers (Euler, DPM++ 2M, DDIM) draw none, and morph without the jump at the middle."""
    return params.seed if position < 0.5 else end_seed(params)


def interpolation_problem(params: GenerationParams) -> str | None:
    """The first interpolation option that cannot run, as a sentence; None for other jobs."""
    if params.mode != INTERPOLATE:
        if params.prompt_to is not None or params.seed_to is not None or params.frames:
            return "Interpolate to, Interpolate seed and Frames are for /interpolate only."
        return None
    if not MIN_FRAMES <= params.frames <= MAX_FRAMES:
        return f"Frames must be {MIN_FRAMES}-{MAX_FRAMES}, not {params.frames}."
    if not MIN_FPS <= params.fps <= MAX_FPS:
        return f"Frames per second must be {MIN_FPS}-{MAX_FPS}, not {params.fps}."
    if params.animation not in ANIMATION_FORMATS:
        return (
            f"Animation format {params.animation!r} is not available; "
            f"formats: {', '.join(ANIMATION_FORMATS)}."
        )
    if end_prompt(params).strip() == params.prompt.strip() and end_seed(params) == params.seed:
        return "Nothing to interpolate: give a second prompt or a second seed that differs."
    if params.count != 1:
        return "An interpolation is one animation: its frames are the images."
    if params.has_variation or params.has_hires or params.control_type is not None:
        return "Variation seeds, hires fix and ControlNet are not available in an interpolation."
    return _prompt_problem(params)


def _prompt_problem(params: GenerationParams) -> str | None:
    """Each end is one prompt encoded once: a schedule (prompt editing, alternation) or AND
    would have no single embedding to lerp; LoRAs apply to the whole animation, so their
    tags belong in the first prompt."""
    texts = (
        (params.prompt, "first prompt"),
        (end_prompt(params), "second prompt"),
        (params.negative, "negative prompt"),
    )
    for text, what in texts:
        if resolve_syntax(text, params.prompt_syntax) == "subprompt":
            continue
        nodes = parse_prompt(text)
        changes = nodes is not None and any(not isinstance(node, str) for node in nodes)
        # A1111 splits only the prompts at AND; it reads the negative prompt whole.
        split = what != "negative prompt" and not is_plain_and(split_and(text))
        if changes or split:
            return (
                f"Prompt editing, alternation and AND in the {what} are not available in an "
                "interpolation: each end is one prompt."
            )
    if params.prompt_to is not None:
        if LORA_TAG in params.prompt_to.lower():
            return "LoRA tags go in the first prompt: one set of LoRAs draws every frame."
        problem = weight_problem(params.prompt_to, params.prompt_syntax, "second prompt")
        if problem is not None:
            return problem
    return None

"""A member's options into checked parameters, and what a job is worth.

Defaults fill what the member left out, from the model's family where it has its own
(FLUX.1 schnell's 4 steps); the price of a job is counted in standard images (an SD 1.5
512x512 image of 20 steps), scaled by its family's cost (engine/api/families.py).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, NewType

from engine.api.checks import DEFAULT_UPSCALE_PIXELS, check_params
from engine.api.edits import EDIT, EDIT_STEP_COST, FROM_NOISE_MODES
from engine.api.families import Family
from engine.api.hires import second_pass_params
from engine.api.infotext import DISTILLED_CFG, INTERPOLATION_KEYS
from engine.api.interpolation import INTERPOLATE
from engine.api.params import GenerationParams, InvalidParams
from engine.api.samplers import AUTOMATIC, DEFAULT_SAMPLER, img2img_steps
from engine.api.specs import ModelSpec
from engine.api.training_params import TrainingParams

DREAM = "dream"
TRAIN = "train"
# Vary (Region)'s free preview: the mask over the picture, nothing painted. Its own kind, so
# a server's inpaint cooldown does not hold up the Run that follows it.
MASK_PREVIEW = "mask"

# Parameters that passed the one check (DreamService.check): the only kind a job is made of.
Checked = NewType("Checked", GenerationParams)


@dataclass(frozen=True, slots=True)
class DreamOptions:
    """What a member typed; None means "use the default"."""

    prompt: str
    negative: str | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    size: tuple[int, int] | None = None
    sampler: str | None = None
    count: int | None = None
    model: str | None = None
    clip_skip: int | None = None
    prompt_syntax: str | None = None
    variation_seed: int | None = None
    variation_strength: float | None = None
    schedule: str | None = None  # A1111's "Schedule type"; None: Automatic
    hires: float | None = None  # hires fix's upscale (issue 16); None: off
    hires_denoise: float | None = None  # None: A1111's 0.7
    hires_size: tuple[int, int] | None = None  # A1111's "Resize width to / height to"
    hires_prompt: str | None = None  # None: the prompt


DEFAULT_STEPS = 20
DEFAULT_CFG = 7.0


# Infotext keys whose meaning this bot reproduces; Version and hashes change nothing.
HONOURED_KEYS = frozenset(
    {
        "Steps",
        "Sampler",
        "Schedule type",
        "CFG scale",
        DISTILLED_CFG,
        "Seed",
        "Size",
        "Model",
        "Model hash",
        "Variation seed",
        "Variation seed strength",
        "Clip skip",
        "Prompt syntax",
        "Version",
        "RNG",
        "Lora hashes",
        "TI hashes",
        # Hires fix (issue 16). Its `Denoising strength` is honoured too, but the key is also
        # img2img's, which a paste does not reproduce, so it stays off this list.
        "Hires upscale",
        "Hires resize",
        "Hires steps",
        "Hires upscaler",
        "First pass size",
        "Hires prompt",
        "Hires negative prompt",
        "Hires sampler",
        "Hires schedule type",
        "Hires CFG Scale",
        "Hires CFG scale",
        *INTERPOLATION_KEYS,  # /interpolate (issue 18)
    }
)

STANDARD_PIXELS = 512 * 512
STANDARD_STEPS = 20
# A mask preview is one pass of a small segmentation model (CLIPSeg is about 150M
# parameters at 352x352): a few hundredths of a standard image, for the wait estimates.
MASK_PREVIEW_UNITS = 0.02


# What "the price of a standard image" means when members ask.
STANDARD_JOB = GenerationParams("", "", 0, STANDARD_STEPS, DEFAULT_CFG, 512, 512, "Euler a", 1, "")


def price_units(params: GenerationParams, spec: ModelSpec | None = None) -> float:
    """How many standard images (512x512, 20 steps) a job is worth.

    Image-conditioned modes run only the steps A1111 runs for their denoise (about `denoise`
    of them: engine/api/samplers.py img2img_steps), so they cost those; an edit runs every
    step, each half as dear again (EDIT_STEP_COST); hires fix adds its
    img2img pass, at its size. A mask preview paints nothing (and is never charged).
    `spec`, the job's model: a step of its family costs `Family.cost` SD 1.5 steps per pixel
    (an estimate from published step times: a FLUX.1 dev step about 6); without it, 1.
    """
    if params.mask_preview:
        return MASK_PREVIEW_UNITS
    pixels = params.width * params.height / STANDARD_PIXELS
    flow = spec is not None and spec.family_row().flow
    steps = (
        params.steps  # an edit runs every step too, from noise (engine/api/edits.py)
        if params.mode in FROM_NOISE_MODES or params.mode == INTERPOLATE
        else img2img_steps(params.sampler, params.steps, params.denoise, flow=flow)
    )
    work = pixels * steps * (EDIT_STEP_COST if params.mode == EDIT else 1.0)
    if params.has_hires:  # hires fix's img2img pass, at its final size (issue 16)
        second = second_pass_params(params)
        second_steps = img2img_steps(second.sampler, second.steps, second.denoise)
        work += second.width * second.height / STANDARD_PIXELS * second_steps
    cost = spec.family_row().cost if spec is not None else 1.0
    # An interpolation's frames are its images, each priced as a /dream image (issue 18).
    return work / STANDARD_STEPS * params.images * cost


def training_as_shown(training: TrainingParams) -> GenerationParams:
    side = training.resolution
    return GenerationParams(
        prompt=f"training {training.name} ({training.method}, {training.steps} steps)",
        negative="",
        seed=training.seed,
        steps=training.steps,
        cfg=0.0,
        width=side,
        height=side,
        sampler="-",
        count=1,
        model=training.model,
    )


def job_kind(params: GenerationParams) -> str:
    """The job's kind as stored and logged: `dream` for text to image, else the mode."""
    if params.mask_preview:
        return MASK_PREVIEW
    return DREAM if params.mode == "txt2img" else params.mode


def resolve_options(
    options: DreamOptions,
    models: dict[str, ModelSpec],
    default_model: str,
    max_prompt: int,
    prompt_syntax: str = "a1111",
    mode_fields: dict[str, Any] | None = None,
    max_upscale_pixels: int = DEFAULT_UPSCALE_PIXELS,
) -> Checked:
    """A member's options plus defaults, checked; InvalidParams names what is wrong."""
    model = options.model or default_model
    spec = models.get(model)
    if spec is None:
        raise InvalidParams(f"Unknown model {model!r}. Models: {', '.join(sorted(models))}.")
    width, height = options.size or spec.size_default()
    row = spec.family_row()
    seed = options.seed if options.seed is not None and options.seed >= 0 else random_seed()
    strength = options.variation_strength or 0.0
    variation_seed = options.variation_seed
    if variation_seed is not None and variation_seed < 0:
        variation_seed = None
    if strength > 0 and variation_seed is None:  # a strength alone asks for a random variation
        variation_seed = random_seed()
    params = GenerationParams(
        prompt=options.prompt.strip(),
        negative=(options.negative or "").strip(),
        seed=seed,
        steps=options.steps if options.steps is not None else spec.steps_default(),
        cfg=options.cfg if options.cfg is not None else spec.cfg_default(),
        width=width,
        height=height,
        sampler=family_sampler(options.sampler, row),
        count=options.count if options.count is not None else 1,
        model=model,
        clip_skip=options.clip_skip or 1,
        prompt_syntax=options.prompt_syntax or prompt_syntax,
        variation_seed=variation_seed,
        variation_strength=strength,
        schedule=options.schedule or AUTOMATIC,
        **_hires_fields(options),
        **(mode_fields or {}),
    )
    check_params(params, models, max_prompt, max_upscale_pixels)
    return Checked(params)


def _hires_fields(options: DreamOptions) -> dict[str, Any]:
    """Hires fix's options as parameters: an upscale or a target size (never both), and
    what only they make sense with."""
    if options.hires is not None and options.hires_size is not None:
        raise InvalidParams("Choose a hires upscale or a hires size, not both.")
    fields: dict[str, Any] = {}
    if options.hires is not None:
        fields["hires_scale"] = options.hires
    if options.hires_size is not None:
        fields["hires_resize"] = options.hires_size
    extras = {"hires_denoise": options.hires_denoise, "hires_prompt": options.hires_prompt}
    for name, value in extras.items():
        if value is not None and not fields:
            raise InvalidParams("Hires denoising and a hires prompt need a hires upscale or size.")
        if value is not None:
            fields[name] = value.strip() if isinstance(value, str) else value
    return fields


def family_sampler(sampler: str | None, row: Family) -> str:
    """The sampler a job runs: the member's, else the family's own. The bot's default (what
    a server or a preference fills in when the member names none) means the family's own
    where the family has no such sampler: FLUX and SD 3 step with flow-matching Euler."""
    if sampler is None or (sampler == DEFAULT_SAMPLER and not row.allows_sampler(sampler)):
        return row.sampler
    return sampler


def random_seed() -> int:
    return secrets.randbelow(2**32)

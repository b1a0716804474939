"""Checks of job parameters that Discord cannot make: each raises InvalidParams naming the
first bad value, in a sentence shown to the member as is. No torch here."""

from __future__ import annotations

from engine.api.family_checks import family_problem
from engine.api.hires import hires_problem
from engine.api.params import (
    CONTROL_TYPES,
    IMAGE_MODES,
    MAX_CFG,
    MAX_CLIP_SKIP,
    MAX_CONTROL_SCALE,
    MAX_COUNT,
    MAX_DENOISE,
    MAX_INPAINT_PADDING,
    MAX_MASK_BLUR,
    MAX_OUTPAINT,
    MAX_SEED,
    MAX_STEPS,
    MAX_UPSCALE,
    MAX_VARIATION_STRENGTH,
    MIN_CFG,
    MIN_CLIP_SKIP,
    MIN_CONTROL_SCALE,
    MIN_COUNT,
    MIN_DENOISE,
    MIN_SIDE,
    MIN_STEPS,
    MIN_UPSCALE,
    MIN_VARIATION_STRENGTH,
    MODES,
    SIZE_MULTIPLE,
    SIZE_RE,
    GenerationParams,
    InvalidParams,
)
from engine.api.prompt_syntax import PROMPT_SYNTAXES, weight_problem
from engine.api.regions import region_problem
from engine.api.samplers import sampler_problem
from engine.api.specs import ModelSpec


def parse_size(text: str) -> tuple[int, int]:
    """`768x512` (also `768 x 512`, `768×512`) to (width, height); format errors only."""
    match = SIZE_RE.match(text)
    if match is None:
        raise InvalidParams(f"Size {text!r} is not WIDTHxHEIGHT, for example 512x768.")
    return int(match.group(1)), int(match.group(2))


def check_size(width: int, height: int, spec: ModelSpec) -> None:
    # SD 3 and FLUX cut the latents into 2x2 patches: 16 pixels, not the VAE's 8.
    multiple = max(SIZE_MULTIPLE, spec.family_row().size_multiple)
    if width % multiple or height % multiple:
        raise InvalidParams(
            f"Size {width}x{height}: width and height must be multiples of {multiple}"
            + (f" for {spec.family_row().label} models." if multiple != SIZE_MULTIPLE else ".")
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InvalidParams(f"Size {width}x{height}: each side must be at least {MIN_SIDE}.")
    cap = spec.pixel_cap()
    if width * height > cap:
        raise InvalidParams(
            f"Size {width}x{height} is {width * height:,} pixels; model {spec.name} allows "
            f"at most {cap:,}."
        )


# The largest result /upscale makes; past the model's own cap it is worked on in tiles.
DEFAULT_UPSCALE_PIXELS = 2048 * 2048


def check_params(
    params: GenerationParams,
    models: dict[str, ModelSpec],
    max_prompt: int,
    max_upscale_pixels: int = DEFAULT_UPSCALE_PIXELS,
) -> None:
    """Raise InvalidParams naming the first bad value; checks what Discord cannot."""
    # An upscale may go without one: the picture itself guides its detail pass.
    if not params.prompt.strip() and params.mode != "upscale":
        raise InvalidParams("The prompt is empty.")
    if len(params.prompt) > max_prompt:
        raise InvalidParams(
            f"The prompt is {len(params.prompt)} characters; the limit is {max_prompt}."
        )
    if len(params.negative) > max_prompt:
        raise InvalidParams(
            f"The negative prompt is {len(params.negative)} characters; the limit is {max_prompt}."
        )
    spec = models.get(params.model)
    if spec is None:
        raise InvalidParams(f"Unknown model {params.model!r}. Models: {', '.join(sorted(models))}.")
    problem = sampler_problem(params.sampler, params.schedule)
    if problem is not None:
        raise InvalidParams(problem)
    if not MIN_STEPS <= params.steps <= MAX_STEPS:
        raise InvalidParams(f"Steps must be {MIN_STEPS}-{MAX_STEPS}, not {params.steps}.")
    if not MIN_CFG <= params.cfg <= MAX_CFG:
        raise InvalidParams(f"CFG scale must be {MIN_CFG:g}-{MAX_CFG:g}, not {params.cfg:g}.")
    if not MIN_COUNT <= params.count <= MAX_COUNT:
        raise InvalidParams(f"Count must be {MIN_COUNT}-{MAX_COUNT}, not {params.count}.")
    if not 0 <= params.seed <= MAX_SEED:
        raise InvalidParams(f"Seed must be 0-{MAX_SEED} (or -1 for random), not {params.seed}.")
    if params.mode == "upscale":
        check_upscale_size(params.width, params.height, max_upscale_pixels)
    else:
        check_size(params.width, params.height, spec)
    check_prompt_options(params)
    check_image_options(params)
    problem = hires_problem(params, spec) or family_problem(params, spec.family_row())
    if problem is not None:
        raise InvalidParams(problem)


def check_upscale_size(width: int, height: int, max_pixels: int) -> None:
    if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
        raise InvalidParams(
            f"Size {width}x{height}: width and height must be multiples of {SIZE_MULTIPLE}."
        )
    if width * height > max_pixels:
        raise InvalidParams(
            f"An upscale to {width}x{height} is {width * height:,} pixels; the limit is "
            f"{max_pixels:,}. Choose a smaller factor."
        )


def check_image_options(params: GenerationParams) -> None:
    """The image-conditioned modes' options (issue 5)."""
    if params.mode not in MODES:
        raise InvalidParams(f"Unknown mode {params.mode!r}. Modes: {', '.join(MODES)}.")
    if params.mode in IMAGE_MODES and params.init_image is None:
        raise InvalidParams(f"{params.mode} needs an image to start from.")
    if not MIN_DENOISE <= params.denoise <= MAX_DENOISE:
        raise InvalidParams(
            f"Denoising strength must be {MIN_DENOISE:g}-{MAX_DENOISE:g}, not {params.denoise:g}."
        )
    if not 0 <= params.mask_blur <= MAX_MASK_BLUR:
        raise InvalidParams(f"Mask blur must be 0-{MAX_MASK_BLUR}, not {params.mask_blur}.")
    if not 0 <= params.inpaint_padding <= MAX_INPAINT_PADDING:
        raise InvalidParams(
            f"Inpaint padding must be 0-{MAX_INPAINT_PADDING}, not {params.inpaint_padding}."
        )
    if len(params.outpaint) != 4 or any(not 0 <= side <= MAX_OUTPAINT for side in params.outpaint):
        raise InvalidParams(f"Each side of an outpaint must be 0-{MAX_OUTPAINT} pixels.")
    if params.mode == "outpaint" and not any(params.outpaint):
        raise InvalidParams("Outpainting needs at least one side to grow (left, right, up, down).")
    if not MIN_UPSCALE <= params.upscale <= MAX_UPSCALE:
        raise InvalidParams(
            f"Upscale factor must be {MIN_UPSCALE:g}-{MAX_UPSCALE:g}, not {params.upscale:g}."
        )
    if params.control_type is not None:
        if params.control_type not in CONTROL_TYPES:
            raise InvalidParams(
                f"Unknown control type {params.control_type!r}. Types: {', '.join(CONTROL_TYPES)}."
            )
        if params.control_image is None:
            raise InvalidParams("A control type needs a control image.")
    if not MIN_CONTROL_SCALE <= params.control_scale <= MAX_CONTROL_SCALE:
        raise InvalidParams(
            f"Control weight must be {MIN_CONTROL_SCALE:g}-{MAX_CONTROL_SCALE:g}, "
            f"not {params.control_scale:g}."
        )
    check_region_options(params)


def check_region_options(params: GenerationParams) -> None:
    """Vary (Region)'s words and cell. Outside inpainting they are only a record (read back
    from infotext, which never brings the picture): they are checked, and do nothing."""
    problem = region_problem(params.mask_prompt, params.mask_cell)
    if problem is not None:
        raise InvalidParams(problem)
    if params.mode != "inpaint" or not params.has_region:
        if params.mask_preview:
            raise InvalidParams("A mask preview needs a region to show.")
        return
    if params.mask_image is not None:
        raise InvalidParams("A region in words and a mask image cannot be used together.")


def check_prompt_options(params: GenerationParams) -> None:
    """Clip skip, prompt syntax and the variation seed (issue 7's options)."""
    if not MIN_CLIP_SKIP <= params.clip_skip <= MAX_CLIP_SKIP:
        raise InvalidParams(
            f"Clip skip must be {MIN_CLIP_SKIP}-{MAX_CLIP_SKIP}, not {params.clip_skip}."
        )
    if params.prompt_syntax not in PROMPT_SYNTAXES:
        raise InvalidParams(
            f"Unknown prompt syntax {params.prompt_syntax!r}. "
            f"Syntaxes: {', '.join(PROMPT_SYNTAXES)}."
        )
    strength = params.variation_strength
    if not MIN_VARIATION_STRENGTH <= strength <= MAX_VARIATION_STRENGTH:
        raise InvalidParams(
            f"Variation strength must be {MIN_VARIATION_STRENGTH:g}-{MAX_VARIATION_STRENGTH:g}, "
            f"not {strength:g}."
        )
    variation = params.variation_seed
    if variation is not None and not 0 <= variation <= MAX_SEED:
        raise InvalidParams(
            f"Variation seed must be 0-{MAX_SEED} (or -1 for random), not {variation}."
        )
    if strength > 0 and variation is None:
        raise InvalidParams("A variation strength above 0 needs a variation seed.")
    for text, what in ((params.prompt, "prompt"), (params.negative, "negative prompt")):
        problem = weight_problem(text, params.prompt_syntax, what)
        if problem is not None:
            raise InvalidParams(problem)

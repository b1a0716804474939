"""A1111's hires fix (issue 16) as parameters: its upscalers, its sizes (modules/processing.py
`calculate_target_resolution`), the second pass as parameters of its own, and its one check
(called from engine/api/checks.py), and the reading of its infotext keys (written with the
others in engine/api/infotext.py). No torch here; the two passes run in
engine/pipelines/hires.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from engine.api.lora_tags import merged_weights, parse_lora_tags
from engine.api.params import MAX_CFG, MIN_CFG, SIZE_RE, GenerationParams, InvalidParams
from engine.api.prompt_syntax import weight_problem
from engine.api.samplers import (
    AUTOMATIC,
    SAMPLERS,
    canonical_schedule,
    sampler_problem,
    split_sampler,
)
from engine.api.specs import ModelSpec

# A1111's "Latent" interpolates the latents bilinearly; Lanczos resizes the decoded picture.
# A1111's other upscalers (ESRGAN, the other latent modes) are refused by name.
LATENT = "Latent"
HIRES_UPSCALERS = (LATENT, "Lanczos")
MIN_HIRES, MAX_HIRES = 1.0, 4.0
MAX_HIRES_STEPS = 150
LATENT_MULTIPLE = 8  # the VAE downsamples by 8: the result has whole latent pixels
NO_RESIZE = (0, 0)
_INFOTEXT_SIZE = re.compile(r"^(\d+)x(\d+)$")  # as A1111 writes sizes


def parse_hires_size(text: str) -> tuple[int, int]:
    """`1024x1536`, or with one side 0 (`1024x0`: the height follows the first pass's aspect),
    as A1111 writes `Hires resize`; format errors only."""
    match = SIZE_RE.match(text)
    if match is None or (int(match.group(1)), int(match.group(2))) == NO_RESIZE:
        raise InvalidParams(
            f"Hires size {text!r} is not WIDTHxHEIGHT (one side may be 0), for example 1024x1536."
        )
    return int(match.group(1)), int(match.group(2))


def upscaled_size(params: GenerationParams) -> tuple[int, int]:
    """The size A1111 upscales the first pass to (hr_upscale_to_x/y), before any crop: the
    scale's, or the resize's; a resize of both sides in another aspect is covered by the side
    that needs the larger upscale, and the rest is cropped (`latent_crop`)."""
    width, height = params.width, params.height
    resize_x, resize_y = params.hires_resize
    if params.hires_resize == NO_RESIZE:
        return int(width * params.hires_scale), int(height * params.hires_scale)
    if resize_y == 0:
        return resize_x, resize_x * height // width
    if resize_x == 0:
        return resize_y * width // height, resize_y
    if width / height < resize_x / resize_y:
        return resize_x, resize_x * height // width
    return resize_y * width // height, resize_y


def latent_crop(params: GenerationParams) -> tuple[int, int]:
    """Latent columns and rows A1111 cuts off the upscaled latents (truncate_x/y) to reach a
    resize of both sides: half from each end, the odd one from the right or bottom."""
    resize_x, resize_y = params.hires_resize
    if resize_x == 0 or resize_y == 0:
        return 0, 0
    upscaled_x, upscaled_y = upscaled_size(params)
    return (upscaled_x - resize_x) // LATENT_MULTIPLE, (upscaled_y - resize_y) // LATENT_MULTIPLE


def hires_size(params: GenerationParams) -> tuple[int, int]:
    """The final size: the upscaled size in whole latent pixels, less A1111's crop."""
    upscaled_x, upscaled_y = upscaled_size(params)
    crop_x, crop_y = latent_crop(params)
    return (
        (upscaled_x // LATENT_MULTIPLE - crop_x) * LATENT_MULTIPLE,
        (upscaled_y // LATENT_MULTIPLE - crop_y) * LATENT_MULTIPLE,
    )


def second_pass_params(params: GenerationParams) -> GenerationParams:
    """The img2img pass as its own parameters: the hires size, steps and denoise, and the
    hires prompts, sampler, schedule type and CFG scale where set, else the first pass's."""
    width, height = hires_size(params)
    return replace(
        params,
        prompt=params.hires_prompt or params.prompt,
        negative=params.hires_negative or params.negative,
        width=width,
        height=height,
        steps=params.hires_steps or params.steps,  # 0: the first pass's, as in A1111
        denoise=params.hires_denoise,
        sampler=params.hires_sampler or params.sampler,
        schedule=_second_schedule(params),
        cfg=params.cfg if params.hires_cfg is None else params.hires_cfg,
    )


def _second_schedule(params: GenerationParams) -> str:
    """A1111's hires schedule: its own, else the first pass's (`get_hr_sampler_and_scheduler`);
    a hires sampler that takes no schedule type (DDIM) runs its own."""
    if params.hires_schedule:
        return params.hires_schedule
    spec = SAMPLERS.get(params.hires_sampler or params.sampler)
    if spec is not None and params.schedule not in spec.schedules:
        return AUTOMATIC
    return params.schedule


def hires_problem(params: GenerationParams, spec: ModelSpec, max_prompt: int) -> str | None:
    """The first hires option that cannot run, as a sentence; None without hires fix."""
    if not params.has_hires:
        return None
    upscaler = params.hires_upscaler
    problem = _size_problem(params, spec)
    if problem is not None:
        return problem
    if upscaler not in HIRES_UPSCALERS:
        return (
            f"Hires upscaler {upscaler!r} is not available here; "
            f"upscalers: {', '.join(HIRES_UPSCALERS)}."
        )
    if not 0 <= params.hires_steps <= MAX_HIRES_STEPS:
        return f"Hires steps must be 0-{MAX_HIRES_STEPS}, not {params.hires_steps}."
    if not 0 < params.hires_denoise <= 1:
        return f"Hires denoising must be above 0 and at most 1, not {params.hires_denoise:g}."
    row = spec.family_row()
    # SD 3 and FLUX have img2img, but their txt2img path has no second pass (yet).
    if params.control_type is not None or row.flow or "img2img" not in row.image_modes:
        return "Hires fix is for SD 1.x/SDXL models here, without ControlNet."
    second = second_pass_params(params)
    if params.hires_sampler is not None or params.hires_schedule is not None:
        problem = sampler_problem(second.sampler, second.schedule)
        if problem is not None:
            return f"Hires pass: {problem}"
    if not MIN_CFG <= second.cfg <= MAX_CFG:
        return f"Hires CFG scale must be {MIN_CFG:g}-{MAX_CFG:g}, not {second.cfg:g}."
    return _prompt_problem(params, max_prompt)


def _size_problem(params: GenerationParams, spec: ModelSpec) -> str | None:
    scale, resized = params.hires_scale, params.hires_resize != NO_RESIZE
    if resized and scale != 1:
        return "Choose a hires upscale or a hires size, not both."
    if not resized and not MIN_HIRES <= scale <= MAX_HIRES:
        return f"Hires upscale must be {MIN_HIRES:g}-{MAX_HIRES:g}, not {scale:g}."
    resize_x, resize_y = params.hires_resize
    asked = f"Hires size {resize_x}x{resize_y}" if resized else f"Hires upscale {scale:g}"
    if resized and min(params.hires_resize) < 0:
        return f"{asked}: a side cannot be negative."
    upscaled_x, upscaled_y = upscaled_size(params)
    if resized and (upscaled_x < params.width or upscaled_y < params.height):
        return f"{asked} is smaller than the first pass, {params.size}."
    if resized and max(upscaled_x / params.width, upscaled_y / params.height) > MAX_HIRES:
        return f"{asked} is over {MAX_HIRES:g} times the first pass, {params.size}."
    width, height = hires_size(params)
    cap = spec.pixel_cap()
    if width * height > cap:
        return (
            f"{asked} makes {width}x{height}, {width * height:,} pixels; "
            f"model {spec.name} allows at most {cap:,}."
        )
    return None


def _prompt_problem(params: GenerationParams, max_prompt: int) -> str | None:
    """The hires prompts' length and weights, checked as the main prompts are. One set of
    adapters runs for a whole batch here (engine/pipelines/lora.py `adapters_for`), so a hires
    prompt must name the main prompt's LoRAs, where A1111 would load others for its pass."""
    texts = {"hires prompt": params.hires_prompt, "hires negative prompt": params.hires_negative}
    for what, text in texts.items():
        if len(text) > max_prompt:
            return f"The {what} is {len(text)} characters; the limit is {max_prompt}."
        problem = weight_problem(text, params.prompt_syntax, what)
        if problem is not None:
            return problem
    if params.hires_prompt and _loras(params.hires_prompt) != _loras(params.prompt):
        return "A hires prompt must have the same <lora:...> tags as the prompt here."
    return None


def _loras(prompt: str) -> list[tuple[str, float]]:
    return sorted(merged_weights(parse_lora_tags(prompt)[1]))


# -- Infotext ----------------------------------------------------------------------------


def hires_options(values: Mapping[str, str], width: int, height: int) -> dict[str, Any]:
    """An infotext's size, and hires fix's keys (engine/api/infotext.py reads the others).
    In old A1111 infotexts `Size` was the final size and `First pass size` the first pass
    (0x0: A1111's about 512x512); A1111 reads them as today's first-pass `Size`, and so do
    we, with the scale that makes the old width."""
    options: dict[str, Any] = {"width": width, "height": height}
    first_pass = _INFOTEXT_SIZE.match(values.get("First pass size", ""))
    if first_pass is not None:
        first = int(first_pass.group(1)), int(first_pass.group(2))
        first_width, first_height = first if all(first) else _old_first_pass(width, height)
        options.update(width=first_width, height=first_height, hires_scale=width / first_width)
    elif "Hires resize" in values:
        resize = _INFOTEXT_SIZE.match(values["Hires resize"])
        if resize is None:
            raise InvalidParams(f"Unreadable hires resize {values['Hires resize']!r}.")
        options["hires_resize"] = int(resize.group(1)), int(resize.group(2))
    elif "Hires upscale" in values:
        options["hires_scale"] = float(values["Hires upscale"])
    else:
        return options
    options["hires_steps"] = int(values.get("Hires steps", "0"))
    options["hires_upscaler"] = values.get("Hires upscaler", LATENT)
    if "Denoising strength" in values:
        options["hires_denoise"] = float(values["Denoising strength"])
    return options | _second_pass_options(values)


def has_hires_keys(values: Mapping[str, str]) -> bool:
    """Whether an infotext's job ran hires fix (its `Denoising strength` is then the second
    pass's): A1111's keys for its target size, or an old infotext's first pass."""
    return any(key in values for key in ("Hires upscale", "Hires resize", "First pass size"))


def _second_pass_options(values: Mapping[str, str]) -> dict[str, Any]:
    """The hires pass's own prompts, sampler, schedule type and CFG scale, read as A1111's
    `get_hr_sampler_and_scheduler` reads them: a combined sampler name (before 1.9) splits."""
    options: dict[str, Any] = {
        "hires_prompt": values.get("Hires prompt", ""),
        "hires_negative": values.get("Hires negative prompt", ""),
    }
    if "Hires sampler" in values:
        schedule = values.get("Hires schedule type", AUTOMATIC)
        options["hires_sampler"], split = split_sampler(values["Hires sampler"], schedule)
        if split != AUTOMATIC:
            options["hires_schedule"] = split
    if "Hires schedule type" in values:
        options["hires_schedule"] = canonical_schedule(values["Hires schedule type"])
    for key in ("Hires CFG Scale", "Hires CFG scale"):  # Forge's spelling, and its extension's
        if key in values and float(values[key]) != float(values.get("CFG scale", "nan")):
            options["hires_cfg"] = float(values[key])
    return options


def _old_first_pass(width: int, height: int) -> tuple[int, int]:
    """A1111's `old_hires_fix_first_pass_dimensions`: about 512x512 pixels, sides up to 64s."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64

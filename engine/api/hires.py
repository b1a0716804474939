"""A1111's hires fix (issue 16) as parameters: its upscalers, its final size and its one
check. No torch here; the two passes run in engine/pipelines/hires.py.

engine/api/params.py calls `hires_problem` from its one check; this module cannot import
that one (it imports this), so parameters are only a type here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.api.specs import ModelSpec

if TYPE_CHECKING:
    from engine.api.params import GenerationParams

# A1111's "Latent" interpolates the latents bilinearly; Lanczos resizes the decoded picture.
# A1111's other upscalers (ESRGAN, the other latent modes) are refused by name.
LATENT = "Latent"
HIRES_UPSCALERS = (LATENT, "Lanczos")
MIN_HIRES, MAX_HIRES = 1.0, 4.0
MAX_HIRES_STEPS = 150
LATENT_MULTIPLE = 8  # the VAE downsamples by 8: the result has whole latent pixels


def hires_size(params: GenerationParams) -> tuple[int, int]:
    """The final size: A1111's int(side * scale), cut to whole latent pixels."""
    width = int(params.width * params.hires_scale) // LATENT_MULTIPLE * LATENT_MULTIPLE
    height = int(params.height * params.hires_scale) // LATENT_MULTIPLE * LATENT_MULTIPLE
    return width, height


def hires_problem(params: GenerationParams, spec: ModelSpec) -> str | None:
    """The first hires option that cannot run, as a sentence; None without hires fix."""
    if not params.has_hires:
        return None
    scale, upscaler = params.hires_scale, params.hires_upscaler
    if not MIN_HIRES <= scale <= MAX_HIRES:
        return f"Hires upscale must be {MIN_HIRES:g}-{MAX_HIRES:g}, not {scale:g}."
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
    width, height = hires_size(params)
    cap = spec.pixel_cap()
    if width * height > cap:
        return (
            f"Hires upscale {scale:g} makes {width}x{height}, {width * height:,} pixels; "
            f"model {spec.name} allows at most {cap:,}."
        )
    return None

"""/edit (issue 18): a picture changed by an instruction, through diffusers'
StableDiffusionInstructPix2PixPipeline. Engine thread only.

The model's spec names an InstructPix2Pix UNet (`edit_source`); it is loaded on the first
edit, beside the model's own, and the pipeline is derived from the model (its text encoder,
VAE and scheduler, shared) and cached on it, so it is freed when the model is. Each image
starts from the starting noise txt2img draws for its seed (variation seeds too), so the
same seed gives the same picture alone or in a batch; the picture's latents go beside the
noisy ones at every step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from PIL import Image

from engine.api.edits import EDIT
from engine.api.errors import EngineError, ModelLoadError
from engine.pipelines.guidance import GUIDED_SCALE
from engine.pipelines.image_pipes import ModeRun, call_pipeline, derived_pipe, from_base
from engine.pipelines.loading import LoadedModel, load_unet

log = logging.getLogger(__name__)

# The latents' 4 channels and the picture's 4: what an InstructPix2Pix UNet takes.
EDIT_CHANNELS = 8
# diffusers guides an edit only at a text scale above 1 and an image scale of at least 1.
_IMAGE_GUIDED = 1.0


def edit_pipe(loaded: LoadedModel) -> Any:
    """The model's InstructPix2Pix pipeline, made on first use and kept with the model."""

    def make() -> Any:
        spec = loaded.spec
        if not spec.edit_source:
            raise EngineError(f"Model {spec.name} cannot edit pictures from instructions here.")
        with torch.inference_mode(False):  # ordinary weights, usable outside inference too
            unet = load_unet(
                spec.edit_source,
                loaded.family,
                loaded.pipe.device,
                loaded.pipe.dtype,
                setting="edit_source",
            )
        channels = unet.config.in_channels
        if channels != EDIT_CHANNELS:
            reason = (
                f"its edit_source is not an InstructPix2Pix model (its UNet takes {channels} "
                f"input channels, not {EDIT_CHANNELS})"
            )
            error = ModelLoadError(
                spec.name,
                reason,
                owner_reason=f'{reason}: fix "edit_source" of model {spec.name} in SDBOT_MODELS',
            )
            log.error("%s", error.detail)
            raise error
        return from_base(StableDiffusionInstructPix2PixPipeline, loaded, unet=unet)

    return derived_pipe(loaded, EDIT, make)


@contextmanager
def pix2pix_guidance(pipe: Any, cfg: float, image_cfg: float) -> Iterator[dict[str, float]]:
    """The pipeline's two guidance scales for A1111's edit guidance at `cfg` and `image_cfg`.

    A1111 (CFGDenoiser.combine_denoised_for_edit_model) always runs the three rows, the
    instruction with the picture, the picture alone and neither, and combines
    `uncond + cfg * (text - image) + image_cfg * (image - uncond)`; diffusers does the same
    only at cfg above 1 and image_cfg from 1, and otherwise runs the first row alone. Outside
    that range the pipeline is called with scales that turn its guidance on, and a forward
    hook on the UNet moves the rows so that diffusers' formula is A1111's at the job's
    scales. Engine thread only: the hook lives on the shared UNet for the call.
    """
    if cfg > 1 and image_cfg >= _IMAGE_GUIDED:
        yield {"guidance_scale": cfg, "image_guidance_scale": image_cfg}
        return

    def fold(module: Any, args: tuple[Any, ...], output: Any) -> Any:
        text, image, uncond = output[0].chunk(3)
        image_row = uncond + (image - uncond) * (image_cfg / _IMAGE_GUIDED)
        text_row = image_row + (text - image) * (cfg / GUIDED_SCALE)
        return (torch.cat([text_row, image_row, uncond]), *output[1:])

    handle = pipe.unet.register_forward_hook(fold)
    try:
        yield {"guidance_scale": GUIDED_SCALE, "image_guidance_scale": _IMAGE_GUIDED}
    finally:
        handle.remove()


def edit(run: ModeRun, picture: Image.Image) -> tuple[list[Image.Image], dict[str, str]]:
    """The run's images: `picture` (the job's size) changed as its instruction says."""
    params = run.params
    pipe = edit_pipe(run.loaded)
    images = call_pipeline(
        run,
        pipe,
        pure_noise_size=picture.size,
        guidance=pix2pix_guidance(pipe, params.cfg, params.image_cfg),
        image=[picture] * len(run.seeds),  # one per image: diffusers deprecates repeating it
    )
    return images, {}

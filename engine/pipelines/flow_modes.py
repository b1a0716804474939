"""img2img, inpaint, outpaint and upscale on SD 3 and FLUX.1: one call of diffusers' own
StableDiffusion3Img2ImgPipeline / StableDiffusion3InpaintPipeline / FluxImg2ImgPipeline /
FluxInpaintPipeline, derived from the loaded model (engine/pipelines/image_pipes.py), on the
engine thread.

engine/pipelines/conditioned.py does the modes' work around the call as it does for SD (the
init image at the job's size, masks and outpaint canvases from engine/imaging/masks.py,
Vary (Region)'s mask from words, the pixels outside the mask put back); this is the call.
The strength is the job's denoise, and the steps run are diffusers' rule for it
(engine/api/samplers.py `flow_img2img_steps`): A1111 has no FLUX to follow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image

from engine.api.families import family
from engine.pipelines.flow import FlowStepReporter
from engine.pipelines.memory import hooked_for

if TYPE_CHECKING:
    from engine.pipelines.image_pipes import ModeRun

# The pipeline inputs that are pictures, given once per image (see call_flow_pipeline).
_PICTURES = ("image", "mask_image")


def call_flow_pipeline(run: ModeRun, pipe: Any, **inputs: Any) -> list[Image.Image]:
    """One call of a derived SD 3 or FLUX img2img-like pipeline for the run's images; PIL
    images in seed order.

    Each image has its own generator seeded with its seed, and its own copy of the picture
    (and mask): given one picture, FLUX's pipelines encode it with the first generator only
    and SD 3's fail past one image, so the second image of a job would otherwise not be what
    its seed gives alone.
    """
    params = run.params
    loaded = run.loaded
    if not isinstance(run.prompts, tuple):
        raise TypeError("an SD 3 or FLUX job needs its prompts encoded by flow.encode_flow_jobs")
    positive, negative = run.prompts
    count = len(run.seeds)
    # The model's own scheduler, fresh for each call (schedulers hold per-call state).
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(loaded.base_scheduler_config)
    device = pipe.device if run.noise == "gpu" else torch.device("cpu")
    generators = [torch.Generator(device=device).manual_seed(seed) for seed in run.seeds]
    embeds: dict[str, Any] = {
        "prompt_embeds": positive.embeds.repeat(count, 1, 1),
        "pooled_prompt_embeds": positive.pooled.repeat(count, 1),
    }
    if negative is not None:
        embeds["negative_prompt_embeds"] = negative.embeds.repeat(count, 1, 1)
        embeds["negative_pooled_prompt_embeds"] = negative.pooled.repeat(count, 1)
    picture: Image.Image = inputs["image"]
    size = (inputs.pop("width", picture.width), inputs.pop("height", picture.height))
    width, height = _patch_size(size, run)
    for key in _PICTURES:
        if key in inputs:
            inputs[key] = [_sized(inputs[key], (width, height))] * count
    reporter = FlowStepReporter(
        loaded, [run.job], run.preview_interval, batch=run.batch, size=(width, height)
    )
    hooked_for(loaded, pipe)  # offloading modes: this derived pipeline takes the hooks
    output = pipe(
        **embeds,
        **inputs,
        width=width,
        height=height,
        num_inference_steps=params.steps,
        guidance_scale=params.cfg,
        generator=generators,
        callback_on_step_end=reporter,
        output_type="pil",
    )
    return [_sized(image, size) for image in output.images]


def _patch_size(size: tuple[int, int], run: ModeRun) -> tuple[int, int]:
    """`size` in the multiples the family's 2x2 latent patches take (16 pixels). The bot
    sizes its inputs so already; a tile or an older job's picture in multiples of 8 is run a
    few pixels smaller and stretched back, where the pipeline would cut it silently."""
    multiple = family(run.loaded.family).size_multiple
    width, height = size
    return max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple)


def _sized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)

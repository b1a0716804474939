"""/upscale and the U buttons: enlarge, then img2img at low denoise, in tiles when large.

A1111's SD upscale script is the model (scripts/sd_upscale.py): the picture is enlarged by
an upscaler (Lanczos, or a dedicated upscaler model), then every overlapping tile of the
model's native size is run through img2img, so an image far past the model's pixel cap
(and the VRAM a single pass would need) is worked on a piece at a time. Tiles are blended
with feathered weights across the overlap, which hides the seams A1111's grid shows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionLatentUpscalePipeline,
    StableDiffusionUpscalePipeline,
)
from PIL import Image

from engine.api.errors import ModelLoadError
from engine.api.families import family
from engine.api.specs import NATIVE_SIZE
from engine.imaging.masks import Box, flatten
from engine.pipelines.image_pipes import (
    ModeRun,
    call_pipeline,
    effective_strength,
    img2img_pipe,
    steps_run,
)
from engine.pipelines.loading import LoadedModel

log = logging.getLogger(__name__)

LANCZOS = "Lanczos"
# The x4 upscaler was trained on 128-pixel inputs; 256-pixel tiles (1024 out) keep its VAE
# decode within a gaming GPU's memory while using few tiles.
UPSCALER_TILE = 256
UPSCALER_OVERLAP = 16
# SD x4 upscaler's own default: how much noise is added to the low-resolution input.
X4_NOISE_LEVEL = 20
_UPSCALER_KEY = "upscaler"


@dataclass(frozen=True, slots=True)
class UpscaleConfig:
    """The owner's upscale settings. `tile` 0 means the model's native size."""

    upscaler: str | None = None
    tile: int = 0
    overlap: int = 64
    upscaler_tile: int = UPSCALER_TILE


def tile_boxes(width: int, height: int, tile_w: int, tile_h: int, overlap: int) -> list[Box]:
    """Overlapping tiles covering the image, spread evenly as A1111's split_grid does."""
    xs = _starts(width, tile_w, overlap)
    ys = _starts(height, tile_h, overlap)
    return [(x, y, x + tile_w, y + tile_h) for y in ys for x in xs]


def _starts(side: int, tile: int, overlap: int) -> list[int]:
    if tile >= side:
        return [0]
    count = math.ceil((side - overlap) / max(tile - overlap, 1))
    count = max(count, 2)
    step = (side - tile) / (count - 1)
    return [int(index * step) for index in range(count)]


def feather(box: Box, size: tuple[int, int], overlap: int) -> np.ndarray:
    """A tile's blending weights: ramping up from 1/(overlap+1) to 1 across the overlap on
    every side that borders another tile, 1 on the image's own edges."""
    left, top, right, bottom = box
    width, height = size
    ramp_x = _ramp(right - left, overlap, left > 0, right < width)
    ramp_y = _ramp(bottom - top, overlap, top > 0, bottom < height)
    return (ramp_y[:, None] * ramp_x[None, :])[..., None]


def _ramp(length: int, overlap: int, before: bool, after: bool) -> np.ndarray:
    ramp = np.ones(length, dtype=np.float64)
    positions = np.arange(length, dtype=np.float64)
    if before and overlap:
        ramp = np.minimum(ramp, (positions + 1) / (overlap + 1))
    if after and overlap:
        ramp = np.minimum(ramp, (length - positions) / (overlap + 1))
    return ramp


def process_tiles(
    image: Image.Image,
    tile: tuple[int, int],
    overlap: int,
    work: Callable[[int, Image.Image], Image.Image],
    scale: int = 1,
) -> Image.Image:
    """`work(index, tile_image)` on every tile, the results (`scale` times the tile's size)
    blended back into one image `scale` times the input's size."""
    width, height = image.size
    boxes = tile_boxes(width, height, min(tile[0], width), min(tile[1], height), overlap)
    out_size = (width * scale, height * scale)
    total = np.zeros((out_size[1], out_size[0], 3), dtype=np.float64)
    weights = np.zeros((out_size[1], out_size[0], 1), dtype=np.float64)
    for index, box in enumerate(boxes):
        scaled: Box = (box[0] * scale, box[1] * scale, box[2] * scale, box[3] * scale)
        part_size = (scaled[2] - scaled[0], scaled[3] - scaled[1])
        part = (
            work(index, image.crop(box)).convert("RGB").resize(part_size, Image.Resampling.LANCZOS)
        )
        weight = feather(scaled, out_size, overlap * scale)
        total[scaled[1] : scaled[3], scaled[0] : scaled[2]] += np.asarray(part) * weight
        weights[scaled[1] : scaled[3], scaled[0] : scaled[2]] += weight
    blended = np.rint(total / weights).clip(0, 255).astype(np.uint8)
    return Image.fromarray(blended)


def tile_side(loaded: LoadedModel, config: UpscaleConfig) -> int:
    """The tiles' side: a multiple of what the family's latents take (SD 3's and FLUX's 16)."""
    multiple = family(loaded.family).size_multiple
    side = config.tile or NATIVE_SIZE[loaded.family][0]
    return max(64, side // multiple * multiple)


def upscale(run: ModeRun, config: UpscaleConfig) -> tuple[list[Image.Image], dict[str, str]]:
    """The init image enlarged to the job's width x height, then refined by img2img."""
    params = run.params
    target = (params.width, params.height)
    source = flatten(run.input_image(params.init_image))
    enlarged, upscaler_name = enlarge(run, source, target, config)
    extra = {"SD upscale overlap": str(config.overlap), "SD upscale upscaler": upscaler_name}
    strength = effective_strength(params, run.flow)
    if strength == 0:
        return [enlarged.copy() for _ in run.seeds], extra
    if target[0] * target[1] <= run.loaded.spec.pixel_cap():
        pipe = img2img_pipe(run.loaded)
        return call_pipeline(run, pipe, image=enlarged, strength=strength), extra
    return tiled_img2img(run, enlarged, strength, config), extra


def tiled_img2img(
    run: ModeRun, image: Image.Image, strength: float, config: UpscaleConfig
) -> list[Image.Image]:
    """img2img tile by tile, one image per seed, progress counted over all tiles.

    Each tile is at most the model's native size, so no decode is larger than a normal
    generation's and the shared VAE needs no tiling of its own.
    """
    side = tile_side(run.loaded, config)
    tile = (min(side, image.width), min(side, image.height))
    boxes = tile_boxes(image.width, image.height, tile[0], tile[1], config.overlap)
    per_tile = steps_run(run.params, run.flow)
    total = per_tile * len(boxes) * len(run.seeds)
    pipe = img2img_pipe(run.loaded)
    log.info("upscale job %s: %d tiles of %dx%d", run.job.job_id, len(boxes), *tile)
    images = []
    for number, seed in enumerate(run.seeds):

        def work(
            index: int, part: Image.Image, seed: int = seed, first: int = number
        ) -> Image.Image:
            run.check_cancelled()
            # A1111's SD upscale gives every tile the same seed.
            done = (first * len(boxes) + index) * per_tile
            [out] = call_pipeline(
                run.for_part(seed, done, total), pipe, image=part, strength=strength
            )
            return out

        images.append(process_tiles(image, tile, config.overlap, work))
    return images


def enlarge(
    run: ModeRun, image: Image.Image, target: tuple[int, int], config: UpscaleConfig
) -> tuple[Image.Image, str]:
    """The image at `target`: by the configured upscaler model, then Lanczos to the exact
    size; by Lanczos alone without one (or when nothing grows)."""
    grows = target[0] > image.width or target[1] > image.height
    if not config.upscaler or not grows:
        return image.resize(target, Image.Resampling.LANCZOS), LANCZOS
    pipe = upscaler_pipe(run.loaded, config.upscaler)
    scale = 4 if isinstance(pipe, StableDiffusionUpscalePipeline) else 2
    side = config.upscaler_tile
    enlarged = process_tiles(
        image, (side, side), UPSCALER_OVERLAP, lambda _, part: _run_upscaler(run, pipe, part), scale
    )
    return enlarged.resize(target, Image.Resampling.LANCZOS), upscaler_name(config.upscaler)


def upscaler_name(source: str) -> str:
    return Path(source.rstrip("/")).name


def _run_upscaler(run: ModeRun, pipe: Any, part: Image.Image) -> Image.Image:
    params = run.params
    run.check_cancelled()
    options: dict[str, Any] = {}
    if isinstance(pipe, StableDiffusionUpscalePipeline):
        options["noise_level"] = X4_NOISE_LEVEL
    else:
        options["guidance_scale"] = 0.0  # the x2 latent upscaler's recommended setting
    output = pipe(
        prompt=params.prompt,
        negative_prompt=params.negative or None,
        image=part,
        num_inference_steps=params.steps,
        generator=torch.Generator().manual_seed(run.seeds[0]),
        # These pipelines still take the old per-step callback; it only checks cancellation.
        callback=lambda step, timestep, latents: run.check_cancelled(),
        output_type="pil",
        **options,
    )
    image: Image.Image = output.images[0]
    return image


def upscaler_pipe(loaded: LoadedModel, source: str) -> Any:
    """The configured upscaler, loaded once per model (freed with it).

    It is a pipeline of its own (UNet, VAE, text encoder: the x4 upscaler takes ~1.5 GB of
    VRAM in fp16, the x2 latent upscaler ~1 GB), since its modules differ from the model's.
    Which kind it is (x4 StableDiffusionUpscalePipeline, x2 StableDiffusionLatentUpscale
    Pipeline) comes from the `_class_name` of its model_index.json.
    """
    held = loaded.derived.get(_UPSCALER_KEY)
    if held is not None and held[0] == source:
        return held[1]
    name = upscaler_name(source)
    path = Path(source).expanduser()
    try:
        with torch.inference_mode(False):  # ordinary weights, usable outside inference too
            pipe = DiffusionPipeline.from_pretrained(
                str(path) if path.is_dir() else source, dtype=loaded.pipe.dtype
            )
    except Exception as error:  # diffusers raises many types for a bad or missing model
        log.exception("loading upscaler %s failed", source)
        raise ModelLoadError(name, type(error).__name__, public=False) from error
    if not isinstance(pipe, StableDiffusionUpscalePipeline | StableDiffusionLatentUpscalePipeline):
        raise ModelLoadError(name, f"{type(pipe).__name__} is not a diffusers upscaler")
    pipe.to(loaded.pipe.device)
    pipe.set_progress_bar_config(disable=True)
    loaded.derived[_UPSCALER_KEY] = (source, pipe)
    return pipe

"""Vary (Region): the mask of an inpaint made from words, on the engine thread, in the job.

CLIPSeg (transformers' `CLIPSegForImageSegmentation`) scores every pixel of the picture
against the member's words ("the sky", "her hat"); engine/imaging/masks.py thresholds and
grows that into a mask, kept inside the job's grid cell when it names one. The job carries
the words and the cell, never a mask file: a reroll, a restart or a fleet worker makes the
same mask again. The model is loaded from SDBOT_SEGMENTER (EngineConfig.segmenter) the first
time a job needs it and kept among the loaded model's derived models, freed with it, as the
upscaler and the ControlNets are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.api.errors import EngineError
from engine.api.regions import NOT_SET_UP, cell_box, describe_region
from engine.imaging import masks
from engine.pipelines.image_pipes import ModeRun

log = logging.getLogger(__name__)

SEGMENTER_KEY = "segmenter"  # its key among a loaded model's derived models
LOAD_FAILED = "The region model could not be loaded; the bot's log has the details."


@dataclass(frozen=True, slots=True)
class Segmenter:
    """A text-prompted segmentation model and its processor, from `source`."""

    source: str
    processor: Any
    model: Any

    def probabilities(self, image: Image.Image, words: str) -> np.ndarray:
        """How surely each pixel of `image` (RGB) is what `words` name, 0 to 1, at its size."""
        inputs = self.processor(
            text=[words], images=[image], return_tensors="pt", padding=True, truncation=True
        )
        device, dtype = self.model.device, self.model.dtype
        logits = self.model(
            input_ids=inputs["input_ids"].to(device),
            attention_mask=inputs["attention_mask"].to(device),
            pixel_values=inputs["pixel_values"].to(device=device, dtype=dtype),
        ).logits
        # One map per text: (1, H, W), or (H, W) from transformers versions that squeeze it.
        scores = torch.sigmoid(logits.float().reshape(1, 1, *logits.shape[-2:]))
        # The processor squashed the picture to the model's square: stretched back the same way.
        resized = torch.nn.functional.interpolate(
            scores, size=(image.height, image.width), mode="bilinear", align_corners=False
        )
        return resized[0, 0].cpu().numpy()


def load_segmenter(source: str, device: torch.device, dtype: torch.dtype) -> Segmenter:
    """CLIPSeg from a Hub id or a folder (`from_pretrained`), on the engine's device."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    model: Any
    try:
        processor = CLIPSegProcessor.from_pretrained(source)
        model = CLIPSegForImageSegmentation.from_pretrained(source)
    # Whatever the library raises (no such folder, not cached offline, not a CLIPSeg) names
    # the owner's paths: the log gets it, the member a sentence.
    except Exception:
        log.exception("the segmenter %s could not be loaded (SDBOT_SEGMENTER)", source)
        raise EngineError(LOAD_FAILED) from None
    model.to(device=device, dtype=dtype).eval()
    return Segmenter(source, processor, model)


def segmenter_for(run: ModeRun) -> Segmenter:
    """The configured segmenter, loaded on first use and kept with the loaded model."""
    source = run.segmenter
    if not source:
        raise EngineError(NOT_SET_UP)
    held = run.loaded.derived.get(SEGMENTER_KEY)
    if isinstance(held, Segmenter) and held.source == source:
        return held
    pipe = run.loaded.pipe
    # The device the model runs on: an offloaded pipeline's own `device` is the CPU.
    device = run.loaded.device or pipe.device
    with torch.inference_mode(False):  # ordinary weights, as the inpainting UNet's
        segmenter = load_segmenter(source, device, pipe.dtype)
    run.loaded.derived[SEGMENTER_KEY] = segmenter
    return segmenter


def region_mask(run: ModeRun, picture: Image.Image) -> Image.Image:
    """The mask of the job's region on `picture` (its init image): white repaints.

    EngineError, so the job fails and is refunded, when the region covers nothing: an
    unchanged picture would look like the bot ignored the member.
    """
    params = run.params
    image = masks.flatten(picture)
    box = cell_box(params.mask_cell, *image.size) if params.mask_cell else None
    probabilities = None
    if params.mask_prompt is not None:
        probabilities = segmenter_for(run).probabilities(image, params.mask_prompt)
    mask = masks.region_mask(image.size, probabilities, box)
    if mask is None:
        region = describe_region(params.mask_prompt, params.mask_cell)
        raise EngineError(
            f"The region {region} matches nothing in the picture: describe it another way, "
            "or choose a grid cell."
        )
    return mask


def region_preview(run: ModeRun) -> tuple[list[Image.Image], dict[str, str]]:
    """A preview job's image: the picture with what the inpaint would repaint tinted (the
    mask blurred as the job will blur it). Nothing is painted."""
    params = run.params
    image = masks.flatten(run.input_image(params.init_image))
    mask = region_mask(run, image)
    size = (params.width, params.height)
    if image.size != size:  # as the inpaint itself stretches a stale input
        image = image.resize(size, Image.Resampling.LANCZOS)
        mask = mask.resize(size, Image.Resampling.LANCZOS)
    shown = masks.overlay_mask(masks.blur_mask(masks.binary_mask(mask), params.mask_blur))
    return [masks.preview_overlay(image, shown) for _ in run.seeds], {}

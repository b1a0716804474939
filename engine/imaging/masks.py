"""Mask and canvas arithmetic of inpainting and outpainting, as A1111 does it. No torch here.

A1111's modules/processing.py (StableDiffusionProcessingImg2Img.init) and modules/masking.py
are the reference: the mask is blurred with a separable Gaussian, "only masked" works on the
mask's bounding box grown to the output's aspect ratio, and every result is composited over
the original through the (blurred) mask, so pixels outside it come back exactly as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

# A1111 reads a mask pixel as "repaint" above half grey (create_binary_mask).
MASK_THRESHOLD = 128
# How far the outpaint mask reaches back into the original image, so the seam is repainted
# and blends; the blur then softens it further.
OUTPAINT_OVERLAP = 8
# The outpaint fill: the image's edge colours smeared outwards and blurred this much, with
# this much noise on top, so the sampler has colour to keep and texture to work from.
_FILL_BLUR_SIGMA = 16.0
_FILL_NOISE_SIGMA = 24.0
# Vary (Region): a segmenter's probability above this is the region (CLIPSeg puts what it
# names well above it and the rest near 0). Fewer pixels than this fraction of the picture
# (or of the cell) is a match on nothing, not a region: specks would repaint nothing useful.
REGION_PROBABILITY = 0.4
MIN_REGION_FRACTION = 0.001
# CLIPSeg's map is coarse (352 pixels a side) and stops short of edges, so the region grows
# by this fraction of the short side before the job's own blur: the seam falls outside it.
REGION_GROWTH = 0.02
# The preview: the region tinted, the rest dimmed, so the member sees what will be painted.
_PREVIEW_TINT = np.array((255.0, 40.0, 120.0), dtype=np.float32)

Box = tuple[int, int, int, int]  # left, top, right, bottom (PIL's crop box)


def binary_mask(mask: Image.Image) -> Image.Image:
    return mask.convert("L").point(lambda value: 255 if value >= MASK_THRESHOLD else 0)


def mask_from_alpha(image: Image.Image) -> Image.Image:
    """White where an RGBA image is transparent: those pixels are repainted."""
    if image.mode != "RGBA":
        raise ValueError("an image without transparency has no mask of its own")
    return binary_mask(Image.eval(image.getchannel("A"), lambda value: 255 - value))


def flatten(image: Image.Image) -> Image.Image:
    """RGB; transparent pixels over white, as A1111 flattens img2img input (its default
    background colour)."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image).convert("RGB")


def blur_mask(mask: Image.Image, radius: int) -> Image.Image:
    """A1111's mask blur: a Gaussian of sigma `radius`, along x then y, its kernel size."""
    if radius <= 0:
        return mask
    kernel = 2 * int(2.5 * radius + 0.5) + 1
    array = np.asarray(mask.convert("L"))
    array = cv2.GaussianBlur(array, (kernel, 1), radius)
    array = cv2.GaussianBlur(array, (1, kernel), radius)
    return Image.fromarray(array)


def crop_region(mask: Image.Image, padding: int) -> Box | None:
    """The mask's bounding box grown by `padding` (masking.get_crop_region_v2); None when
    the mask is empty."""
    box = mask.getbbox()
    if box is None:
        return None
    left, top, right, bottom = box
    width, height = mask.size
    return (
        max(left - padding, 0),
        max(top - padding, 0),
        min(right + padding, width),
        min(bottom + padding, height),
    )


def expand_to_ratio(box: Box, ratio: float, image_size: tuple[int, int]) -> Box:
    """`box` grown on its short side to the aspect ratio `ratio` (width / height), kept
    inside the image where it fits (masking.expand_crop_region)."""
    left, top, right, bottom = box
    width, height = image_size
    if (right - left) / (bottom - top) > ratio:
        top, bottom = _grow_span(top, bottom, (right - left) / ratio, height)
    else:
        left, right = _grow_span(left, right, (bottom - top) * ratio, width)
    return left, top, right, bottom


def _grow_span(start: int, end: int, wanted: float, limit: int) -> tuple[int, int]:
    grow = int(wanted - (end - start))
    start -= grow // 2
    end += grow - grow // 2
    if end > limit:
        start -= end - limit
        end = limit
    if start < 0:
        end = min(end - start, limit)
        start = 0
    return start, end


def composite(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """`generated` over `original` through `mask` (A1111's overlay): where the mask is 0 the
    original pixel comes back unchanged, bit for bit."""
    alpha = np.asarray(mask.convert("L"), dtype=np.float32)[..., None] / 255.0
    base = np.asarray(original.convert("RGB"), dtype=np.float32)
    new = np.asarray(generated.convert("RGB").resize(original.size), dtype=np.float32)
    mixed = base * (1.0 - alpha) + new * alpha
    return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8))


def overlay_mask(blurred: Image.Image) -> Image.Image:
    """The whole-picture overlay doubles the blurred mask (A1111), so the repainted area
    shows fully and only the outer half of the blur blends."""
    array = np.asarray(blurred.convert("L"), dtype=np.float32) * 2
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


@dataclass(frozen=True, slots=True)
class MaskedWork:
    """What the pipeline works on for one inpaint, and how its result goes back."""

    image: Image.Image  # at the working size
    mask: Image.Image  # at the working size, blurred
    overlay: Image.Image  # at the original size: where the result shows through
    box: Box | None  # the region worked on at full resolution; None for the whole picture


def masked_work(
    image: Image.Image,
    mask: Image.Image,
    size: tuple[int, int],
    *,
    blur: int,
    only_masked: bool,
    padding: int,
) -> MaskedWork:
    """Prepare an inpaint of `image` (RGB) where `mask` is white, at the working `size`."""
    blurred = blur_mask(binary_mask(mask), blur)
    box = crop_region(blurred, padding) if only_masked else None
    if box is None:
        return MaskedWork(
            image.resize(size, Image.Resampling.LANCZOS),
            blurred.resize(size, Image.Resampling.LANCZOS),
            overlay_mask(blurred),
            None,
        )
    box = expand_to_ratio(box, size[0] / size[1], image.size)
    return MaskedWork(
        image.crop(box).resize(size, Image.Resampling.LANCZOS),
        blurred.crop(box).resize(size, Image.Resampling.LANCZOS),
        blurred,
        box,
    )


def finish(original: Image.Image, generated: Image.Image, work: MaskedWork) -> Image.Image:
    """A generated image put back into the original: pasted into the worked-on region when
    that was only the masked area, then composited through the overlay mask."""
    if work.box is None:
        return composite(original, generated, work.overlay)
    left, top, right, bottom = work.box
    pasted = original.copy()
    region = generated.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    pasted.paste(region, (left, top))
    return composite(original, pasted, work.overlay)


def region_mask(
    size: tuple[int, int], probabilities: np.ndarray | None, box: Box | None
) -> Image.Image | None:
    """The mask of a region named in words (`probabilities`, one per pixel, at `size`), in
    a grid cell (`box`), or both; None when it covers next to nothing.

    White repaints. The words' region grows by REGION_GROWTH and stays inside the cell.
    """
    width, height = size
    inside = np.zeros((height, width), dtype=bool)
    if box is None:
        inside[:] = True
    else:
        left, top, right, bottom = box
        inside[top:bottom, left:right] = True
    if probabilities is None:
        region = inside
    else:
        region = (probabilities >= REGION_PROBABILITY) & inside
        if region.sum() < max(1.0, MIN_REGION_FRACTION * inside.sum()):
            return None
        region = grow(region, max(1, round(REGION_GROWTH * min(width, height)))) & inside
    return Image.fromarray(region.astype(np.uint8) * 255)


def grow(region: np.ndarray, radius: int) -> np.ndarray:
    """`region` (booleans) dilated by a disc of `radius` pixels."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(region.astype(np.uint8), kernel).astype(bool)


def preview_overlay(image: Image.Image, shown: Image.Image) -> Image.Image:
    """`image` (RGB) with what an inpaint will show through (`shown`, an L mask: the overlay
    of MaskedWork) tinted and the rest dimmed."""
    alpha = np.asarray(shown.convert("L").resize(image.size), dtype=np.float32)[..., None] / 255
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    dimmed = pixels * 0.5
    tinted = pixels * 0.5 + _PREVIEW_TINT * 0.5
    mixed = dimmed * (1.0 - alpha) + tinted * alpha
    return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8))


def outpaint_canvas(
    image: Image.Image, size: tuple[int, int], offset: tuple[int, int], seed: int
) -> tuple[Image.Image, Image.Image]:
    """`image` placed at `offset` on a canvas of `size`, the new area pre-filled, and the
    mask of what is to be painted (the new area plus OUTPAINT_OVERLAP pixels into the old).

    The fill is A1111's idea of "fill" plus "latent noise": edge colours carried outwards,
    blurred, with seeded noise, so the same seed fills the same way.
    """
    width, height = size
    left, top = offset
    right, bottom = width - left - image.width, height - top - image.height
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    padded = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
    smeared = cv2.GaussianBlur(padded, (0, 0), _FILL_BLUR_SIGMA)
    noise = np.random.default_rng(seed).normal(0.0, _FILL_NOISE_SIGMA, padded.shape)
    filled = np.clip(smeared + noise, 0, 255)
    filled[top : top + image.height, left : left + image.width] = pixels
    canvas = Image.fromarray(np.rint(filled).astype(np.uint8))

    inner = (
        left + (OUTPAINT_OVERLAP if left else 0),
        top + (OUTPAINT_OVERLAP if top else 0),
        left + image.width - (OUTPAINT_OVERLAP if right else 0),
        top + image.height - (OUTPAINT_OVERLAP if bottom else 0),
    )
    mask = np.full((height, width), 255, dtype=np.uint8)
    mask[inner[1] : inner[3], inner[0] : inner[2]] = 0
    return canvas, Image.fromarray(mask)

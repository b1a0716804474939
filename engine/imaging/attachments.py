"""Images members upload are untrusted: read them defensively, the same way everywhere.

The type is told from the bytes, never from a file name. Pillow only reads the header on
open, so the pixel count is checked before any pixel is decoded: a small file claiming
20000x20000 pixels is refused without the memory to decode it.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from engine.api.params import InvalidParams
from engine.imaging.images import UnreadableImage
from engine.imaging.masks import binary_mask, flatten

log = logging.getLogger(__name__)

# What members actually upload; HEIC/HEIF (phone photos) when pillow-heif is installed.
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "MPO", "HEIF"})


@functools.cache
def _register_heif() -> bool:
    """Teach Pillow HEIC once, when the first attachment is read: importing this module
    changes nothing global."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:  # optional: without it HEIC files are refused with a clear reason
        return False
    register_heif_opener()
    return True


def load_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode an attachment into an RGB or RGBA image, upright, first frame only.

    Raises UnreadableImage, with a message for the member, for anything that is not a
    readable image of an accepted format within `max_pixels`.
    """
    if not data:
        raise UnreadableImage("That file is empty.")
    _register_heif()
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnreadableImage("That file is not an image I can read.") from None
    except Image.DecompressionBombError:  # Pillow's own header check, past ~179M pixels
        raise UnreadableImage(
            f"That image has too many pixels; the limit is {max_pixels:,} pixels."
        ) from None
    except (OSError, ValueError) as error:
        raise UnreadableImage(f"That image cannot be read ({_reason(error)}).") from None
    with image:
        if image.format not in ACCEPTED_FORMATS:
            raise UnreadableImage(
                f"{image.format or 'That'} images are not accepted; send PNG, JPEG or WebP."
            )
        width, height = image.size
        if width * height > max_pixels or width < 1 or height < 1:
            raise UnreadableImage(
                f"That image is {width}x{height} pixels; the limit is {max_pixels:,} pixels."
            )
        try:
            image.seek(0)  # animated GIF/WebP: the first frame
            with warnings.catch_warnings():
                # Pillow warns on some malformed but readable files; the decode below decides.
                warnings.simplefilter("ignore")
                image.load()
            upright = ImageOps.exif_transpose(image)
            return _normalise_mode(upright)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            reason = _reason(error)
            raise UnreadableImage(f"That image is damaged or truncated ({reason}).") from None


def _normalise_mode(image: Image.Image) -> Image.Image:
    """RGB, or RGBA when the image has transparency (inpainting reads masks from it).

    Palette, greyscale, CMYK and 16-bit images all come out as 8-bit RGB(A).
    """
    if image.mode in ("RGB", "RGBA"):
        return image.copy()
    if image.mode == "P":
        has_alpha = "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    if image.mode in ("LA", "PA"):
        return image.convert("RGBA")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16-bit and float greyscale: scale into 8 bits rather than clip at 255.
        scale = 1 / 256 if image.mode.startswith("I") else 255.0
        grey = image.point(lambda value: value * scale, "F") if image.mode != "F" else image
        return grey.convert("L").convert("RGB")
    return image.convert("RGB")


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


# The VAE downsamples by 8 and the UNet's smallest useful side is 64 pixels.
_MULTIPLE = 8
_MIN_SIDE = 64
# A mask is stretched onto the image when their aspect ratios differ by at most this much;
# more, and it was drawn for another picture (or another crop of it).
_MASK_ASPECT_TOLERANCE = 0.02
# Longer than this against its width (either way), a picture fits no model's size: scaled
# to 64 pixels across, its length alone would be past any pixel cap.
MAX_ASPECT = 8.0


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An attachment made ready for the engine: PNG bytes at a size the model works with.

    `note` tells the member what was done to it ("" when it was used as sent).
    """

    png: bytes
    width: int
    height: int
    note: str
    has_alpha: bool


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _prepared(image: Image.Image, note: str) -> PreparedImage:
    return PreparedImage(_png(image), image.width, image.height, note, image.mode == "RGBA")


def fit_size(width: int, height: int, pixel_cap: int, multiple: int = _MULTIPLE) -> tuple[int, int]:
    """The closest size to `width`x`height` in multiples of 8 (`multiple`: the model
    family's, SD 3's and FLUX's 16), at most `pixel_cap` pixels and at least 64 a side, with
    the aspect ratio kept as well as those allow.

    InvalidParams for a picture too long and thin to fit: without that check a 4000x1
    strip would be scaled to 256000x64 before anything refused it.
    """
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise InvalidParams(
            f"That picture is {width}x{height}: too long and thin to use. Crop it to at most "
            f"{MAX_ASPECT:g}:1."
        )
    scale = min(1.0, math.sqrt(pixel_cap / (width * height)))
    scale = max(scale, _MIN_SIDE / min(width, height))  # a tiny image is scaled up
    ratio = width / height
    candidates = [
        (fitted_w, fitted_h)
        for fitted_w in _multiples_around(width * scale, multiple)
        for fitted_h in _multiples_around(height * scale, multiple)
    ]
    within = [(w, h) for w, h in candidates if w * h <= pixel_cap]
    if not within:
        raise InvalidParams(f"That picture cannot be fitted within {pixel_cap:,} pixels.")
    # The truest aspect ratio; between equals, the larger image.
    return min(
        within, key=lambda size: (abs(size[0] / size[1] - ratio) / ratio, -size[0] * size[1])
    )


def _multiples_around(value: float, multiple: int) -> set[int]:
    below = max(_MIN_SIDE, math.floor(value / multiple) * multiple)
    above = max(_MIN_SIDE, math.ceil(value / multiple) * multiple)
    return {below, above}


def prepare_init(
    data: bytes, *, max_pixels: int, pixel_cap: int, multiple: int = _MULTIPLE
) -> PreparedImage:
    """The starting image of img2img, inpaint, outpaint: resized to what the model works
    with (`multiple`: its family's size multiple). Transparency is kept: inpainting without
    a mask repaints the transparent pixels."""
    image = load_image(data, max_pixels=max_pixels)
    size = fit_size(image.width, image.height, pixel_cap, multiple)
    if size == image.size:
        return _prepared(image, "")
    note = f"Resized from {image.width}x{image.height} to {size[0]}x{size[1]} to fit the model."
    return _prepared(image.resize(size, Image.Resampling.LANCZOS), note)


def prepare_mask(data: bytes | None, init: PreparedImage, *, max_pixels: int) -> PreparedImage:
    """An "L" mask the size of `init`: white repaints, black keeps.

    From the attachment, or without one from the init image's transparent pixels.
    """
    if data is None:
        mask, note = _mask_from_alpha(init), ""
    else:
        mask, note = _mask_from_attachment(data, init, max_pixels)
    mask = binary_mask(mask)
    if mask.getbbox() is None:
        raise InvalidParams(
            "The mask is empty: paint white where the image should change (black keeps)."
        )
    return PreparedImage(_png(mask), mask.width, mask.height, note, False)


def _mask_from_alpha(init: PreparedImage) -> Image.Image:
    if not init.has_alpha:
        raise InvalidParams(
            "Attach a mask, or an image with transparent pixels where it should change."
        )
    with Image.open(io.BytesIO(init.png)) as image:
        alpha = image.getchannel("A")
    return ImageOps.invert(alpha)


def _mask_from_attachment(
    data: bytes, init: PreparedImage, max_pixels: int
) -> tuple[Image.Image, str]:
    image = load_image(data, max_pixels=max_pixels)
    if image.mode == "RGBA":
        # Transparent parts of a mask drawn on a layer mean "keep": black under them.
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, image)
    mask = image.convert("L")
    if mask.size == (init.width, init.height):
        return mask, ""
    mask_ratio = mask.width / mask.height
    init_ratio = init.width / init.height
    if abs(mask_ratio - init_ratio) / init_ratio > _MASK_ASPECT_TOLERANCE:
        raise InvalidParams(
            f"The mask is {mask.width}x{mask.height} but the image is {init.width}x{init.height}: "
            "draw the mask on the same picture (same shape)."
        )
    note = f"Mask resized from {mask.width}x{mask.height} to {init.width}x{init.height}."
    return mask.resize((init.width, init.height), Image.Resampling.LANCZOS), note


def prepare_control(data: bytes, *, max_pixels: int, size: tuple[int, int]) -> PreparedImage:
    """A ControlNet image scaled to cover `size` and centre-cropped to it, as A1111's
    "Crop and Resize" does, so the map lines up with the generated image."""
    image = load_image(data, max_pixels=max_pixels).convert("RGB")
    if image.size == size:
        return _prepared(image, "")
    fitted = ImageOps.fit(image, size, Image.Resampling.LANCZOS)
    note = (
        f"Control image cropped and resized from {image.width}x{image.height} "
        f"to {size[0]}x{size[1]}."
    )
    return _prepared(fitted, note)


def prepare_for_reading(data: bytes, *, max_pixels: int, longest: int) -> PreparedImage:
    """A picture only looked at (/describe): checked like any attachment, flattened onto
    white, and shrunk to `longest` pixels a side, which is all a captioner looks at."""
    image = flatten(load_image(data, max_pixels=max_pixels))
    image.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    return _prepared(image, "")


def outpaint_pads(
    width: int, height: int, pads: tuple[int, int, int, int], multiple: int = _MULTIPLE
) -> tuple[int, int, int, int]:
    """`pads` (left, right, up, down) grown so the canvas is a multiple of 8 (`multiple`)
    each way; the extra pixels go to the sides the member chose (split between them)."""
    left, right, up, down = pads
    left, right = _grow_to_multiple(width, left, right, multiple)
    up, down = _grow_to_multiple(height, up, down, multiple)
    return left, right, up, down


def _grow_to_multiple(side: int, before: int, after: int, multiple: int) -> tuple[int, int]:
    extra = -(side + before + after) % multiple
    if before and after:
        return before + extra // 2, after + extra - extra // 2
    if before:
        return before + extra, after
    return before, after + extra


def outpaint_size(
    width: int, height: int, pads: tuple[int, int, int, int], multiple: int = _MULTIPLE
) -> tuple[int, int]:
    """The canvas an outpaint of a `width`x`height` image makes (multiples of `multiple`)."""
    left, right, up, down = outpaint_pads(width, height, pads, multiple)
    return width + left + right, height + up + down


@dataclass(frozen=True, slots=True)
class Reframe:
    """Midjourney's zoom out, pan and make square as an outpaint: the picture shrunk to
    `inner` and grown by `pads` (left, right, up, down) into a canvas within the model."""

    inner: tuple[int, int]
    pads: tuple[int, int, int, int]

    @property
    def canvas(self) -> tuple[int, int]:
        left, right, up, down = self.pads
        return self.inner[0] + left + right, self.inner[1] + up + down


PAN_DIRECTIONS = ("left", "right", "up", "down")
# A pan grows the canvas by half the picture's side, as Midjourney's pan buttons do.
PAN_FRACTION = 0.5


def zoom_out(
    width: int, height: int, factor: float, pixel_cap: int, multiple: int = _MULTIPLE
) -> Reframe:
    """The picture `factor` times smaller in the middle of a canvas of its own size (or the
    largest the model takes), so zooming can repeat without the picture growing. Canvases
    here are in multiples of `multiple` (the model family's); the picture inside in 8s."""
    canvas_w, canvas_h = fit_size(width, height, pixel_cap, multiple)
    inner = (_round8(canvas_w / factor), _round8(canvas_h / factor))
    return Reframe(inner, _centred(canvas_w - inner[0], canvas_h - inner[1]))


def pan(
    width: int, height: int, direction: str, pixel_cap: int, multiple: int = _MULTIPLE
) -> Reframe:
    """The canvas grown by half a side towards `direction`, the whole within the model."""
    if direction not in PAN_DIRECTIONS:
        raise InvalidParams(f"Pan {direction!r}: choose one of {', '.join(PAN_DIRECTIONS)}.")
    sideways = direction in ("left", "right")
    grow_w = width * PAN_FRACTION if sideways else 0.0
    grow_h = 0.0 if sideways else height * PAN_FRACTION
    total_w, total_h = fit_size(round(width + grow_w), round(height + grow_h), pixel_cap, multiple)
    scale = min(total_w / (width + grow_w), total_h / (height + grow_h))
    inner = (_round8(width * scale), _round8(height * scale))
    extra_w, extra_h = max(0, total_w - inner[0]), max(0, total_h - inner[1])
    pads = {
        "left": (extra_w, 0, 0, 0),
        "right": (0, extra_w, 0, 0),
        "up": (0, 0, extra_h, 0),
        "down": (0, 0, 0, extra_h),
    }[direction]
    return Reframe(inner, pads)


def make_square(width: int, height: int, pixel_cap: int, multiple: int = _MULTIPLE) -> Reframe:
    """The short side grown evenly on both ends until the canvas is square."""
    if width == height:
        raise InvalidParams("That picture is square already.")
    side = max(width, height)
    square, _ = fit_size(side, side, pixel_cap, multiple)
    scale = square / side
    inner = (_round8(width * scale), _round8(height * scale))
    return Reframe(inner, _centred(square - inner[0], square - inner[1]))


def shrunk_png(data: bytes, size: tuple[int, int], *, max_pixels: int) -> bytes:
    """The picture resized to `size` (its alpha kept), as a PNG: the inner part of a
    reframe."""
    return _png(load_image(data, max_pixels=max_pixels).resize(size, Image.Resampling.LANCZOS))


def _round8(value: float) -> int:
    return max(_MIN_SIDE, round(value / _MULTIPLE) * _MULTIPLE)


def _centred(extra_w: int, extra_h: int) -> tuple[int, int, int, int]:
    extra_w, extra_h = max(0, extra_w), max(0, extra_h)
    return extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2


def upscale_size(
    width: int, height: int, factor: float, multiple: int = _MULTIPLE
) -> tuple[int, int]:
    """The target of an upscale by `factor`, rounded to multiples of 8 (`multiple`)."""

    def side(value: int) -> int:
        return max(_MIN_SIDE, round(value * factor / multiple) * multiple)

    return side(width), side(height)

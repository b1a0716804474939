"""Images members upload are untrusted: read them defensively, the same way everywhere.

The type is told from the bytes, never from a file name. Pillow only reads the header on
open, so the pixel count is checked before any pixel is decoded: a small file claiming
20000x20000 pixels is refused without the memory to decode it.
"""

from __future__ import annotations

import io
import logging
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from engine.images import UnreadableImage

log = logging.getLogger(__name__)

# What members actually upload; HEIC/HEIF (phone photos) when pillow-heif is installed.
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "MPO", "HEIF"})


def _register_heif() -> bool:
    try:
        from pillow_heif import register_heif_opener
    except ImportError:  # optional: without it HEIC files are refused with a clear reason
        return False
    register_heif_opener()
    return True


_HEIF = _register_heif()


def load_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode an attachment into an RGB or RGBA image, upright, first frame only.

    Raises UnreadableImage, with a message for the member, for anything that is not a
    readable image of an accepted format within `max_pixels`.
    """
    if not data:
        raise UnreadableImage("That file is empty.")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnreadableImage("That file is not an image I can read.") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
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

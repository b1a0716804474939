"""Encoding results: PNG with A1111's infotext, and smaller encodings when a file is too big."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.api.params import InvalidParams

# EXIF UserComment: where A1111 writes and reads infotext for JPEG and WebP files.
EXIF_USER_COMMENT = 0x9286
EXIF_IFD = 0x8769
WEBP_QUALITIES = (95, 90, 80, 70, 60, 50)


@dataclass(frozen=True, slots=True)
class EncodedImage:
    data: bytes
    extension: str


def encode_png(image: Image.Image, infotext: str) -> bytes:
    info = PngInfo()
    info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_infotext(data: bytes) -> str | None:
    with Image.open(io.BytesIO(data)) as image:
        text = image.info.get("parameters")
        if text is None and hasattr(image, "text"):
            text = image.text.get("parameters")
    return text


class UnreadableImage(InvalidParams):
    """Not an image we read parameters from; the message says why, for the member."""


INFOTEXT_FORMATS = ("PNG", "JPEG", "WEBP")


def read_infotext(data: bytes) -> str | None:
    """A1111's parameters from a PNG's text chunk or a JPEG/WebP's EXIF UserComment.

    The format is told from the bytes, not a file name, and no pixel is decoded: only
    headers and metadata are read, so a decompression bomb costs nothing here.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as error:  # Pillow raises many types for bytes that are not an image
        raise UnreadableImage("That file is not an image I can read.") from error
    with image:
        if image.format not in INFOTEXT_FORMATS:
            raise UnreadableImage(
                f"That is a {image.format} image; parameters live in PNG, JPEG or WebP files."
            )
        if image.format == "PNG":
            text = image.info.get("parameters")
            return text if isinstance(text, str) else None
        comment = image.getexif().get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)
    return _decode_user_comment(comment) if isinstance(comment, bytes) else None


def _decode_user_comment(comment: bytes) -> str | None:
    prefix, body = comment[:8], comment[8:]
    if prefix == b"UNICODE\0":
        # piexif writes big-endian; a byte-order mark, when present, says otherwise.
        if body.startswith(b"\xff\xfe"):
            return body[2:].decode("utf-16-le", errors="replace")
        return body.decode("utf-16-be", errors="replace").lstrip("\ufeff")
    if prefix.startswith(b"ASCII"):
        return body.decode("ascii", errors="replace")
    return comment.decode("utf-8", errors="replace") or None


def user_comment(infotext: str) -> bytes:
    # EXIF's UNICODE comment is UTF-16; A1111 (through piexif) writes it big-endian.
    return b"UNICODE\0" + infotext.encode("utf-16-be")


def _encode_webp(image: Image.Image, infotext: str, quality: int) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[EXIF_USER_COMMENT] = user_comment(infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=quality, method=4, exif=exif.tobytes())
    return buffer.getvalue()


def fit_to_limit(png: bytes, infotext: str, limit: int) -> EncodedImage:
    """The PNG if it fits, else the best WebP that does (infotext kept in EXIF).

    Discord refuses uploads over the guild's limit; a result is re-encoded, never dropped.
    As a last resort the image is halved until it fits.
    """
    if len(png) <= limit:
        return EncodedImage(png, "png")
    with Image.open(io.BytesIO(png)) as opened:
        image = opened.convert("RGB")
    while True:
        for quality in WEBP_QUALITIES:
            data = _encode_webp(image, infotext, quality)
            if len(data) <= limit:
                return EncodedImage(data, "webp")
        if min(image.size) <= 16:
            return EncodedImage(data, "webp")
        image = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)

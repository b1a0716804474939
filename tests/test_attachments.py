"""Untrusted attachments: decoded defensively, sized for the model, masks checked."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.api.params import InvalidParams
from engine.imaging.attachments import (
    PreparedImage,
    fit_size,
    load_image,
    outpaint_pads,
    outpaint_size,
    prepare_control,
    prepare_init,
    prepare_mask,
    upscale_size,
)
from engine.imaging.images import UnreadableImage

LIMIT = 4096 * 4096
CAP = 512 * 512


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width`x`height` pixels in a few dozen bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def frames(fmt: str) -> bytes:
    red, blue = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    return encode(red, fmt, save_all=True, append_images=[blue], duration=100, loop=0)


# -- decoding -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, this is not a picture", "not an image"),
        (encode(Image.new("RGB", (64, 64), "red"))[:60], "damaged or truncated|cannot be read"),
        (png_header_only(20000, 20000), "too many pixels; the limit"),
        (png_header_only(5000, 5000), "5000x5000 pixels; the limit"),
    ],
    ids=["empty", "not-an-image", "truncated", "decompression-bomb", "over-the-limit"],
)
def test_bad_files_are_refused_with_a_reason(data, message):
    assert len(data) < 200
    with pytest.raises(UnreadableImage, match=message):
        load_image(data, max_pixels=LIMIT)


def test_16_bit_png_is_scaled_into_8_bits():
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    image = load_image(encode(Image.fromarray(ramp)), max_pixels=LIMIT)
    assert image.mode == "RGB"
    values = np.asarray(image)[..., 0]
    assert values.min() == 0
    assert values.max() >= 250


def test_cmyk_jpeg_becomes_rgb():
    image = load_image(
        encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"), max_pixels=LIMIT
    )
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((16, 16))
    assert red > 200
    assert green < 60
    assert blue < 60


def test_palette_with_transparency_becomes_rgba():
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (0, 0, 8, 16))
    image = load_image(encode(palette, transparency=1), max_pixels=LIMIT)
    assert image.mode == "RGBA"
    assert image.getpixel((2, 2))[3] == 0
    assert image.getpixel((12, 2)) == (255, 0, 0, 255)


def test_exif_rotated_jpeg_comes_out_upright():
    wide = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    image = load_image(encode(wide, "JPEG", exif=exif.tobytes()), max_pixels=LIMIT)
    assert image.size == (20, 40)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_its_first_frame(fmt):
    image = load_image(frames(fmt), max_pixels=LIMIT)
    red, _green, blue = image.convert("RGB").getpixel((8, 8))
    assert red > 200
    assert blue < 60


def test_heic_photos_are_read():
    pillow_heif = pytest.importorskip("pillow_heif")
    # Encoded through pillow-heif's own API: reading it is load_image's job alone.
    buffer = io.BytesIO()
    try:
        pillow_heif.from_pillow(Image.new("RGB", (64, 48), (0, 128, 255))).save(buffer)
    except (KeyError, OSError, ValueError, RuntimeError):
        pytest.skip("this pillow-heif build cannot encode HEIC")
    image = load_image(buffer.getvalue(), max_pixels=LIMIT)
    assert image.size == (64, 48)


# -- sizing ----------------------------------------------------------------------------------


def test_init_is_resized_to_multiples_of_8_under_the_cap_and_says_so():
    prepared = prepare_init(encode(Image.new("RGB", (1000, 750))), max_pixels=LIMIT, pixel_cap=CAP)
    assert (prepared.width, prepared.height) == (584, 440)
    assert prepared.note == "Resized from 1000x750 to 584x440 to fit the model."
    assert decoded(prepared.png).size == (584, 440)
    same = prepare_init(encode(Image.new("RGB", (512, 384))), max_pixels=LIMIT, pixel_cap=CAP)
    assert (same.width, same.height, same.note, same.has_alpha) == (512, 384, "", False)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((30, 30), (64, 64)),
        ((513, 513), (512, 512)),
        ((520, 390), (520, 392)),
        ((100, 70), (104, 72)),
        ((1000, 750), (584, 440)),
    ],
)
def test_fit_size_keeps_the_aspect_in_multiples_of_8_under_the_cap(size, expected):
    assert fit_size(*size, CAP) == expected


def test_init_keeps_alpha():
    rgba = Image.new("RGBA", (64, 64), (10, 20, 30, 255))
    prepared = prepare_init(encode(rgba), max_pixels=LIMIT, pixel_cap=CAP)
    assert prepared.has_alpha
    assert decoded(prepared.png).mode == "RGBA"


def test_control_is_cropped_to_cover():
    prepared = prepare_control(
        encode(Image.new("RGB", (300, 100))), max_pixels=LIMIT, size=(64, 64)
    )
    assert (prepared.width, prepared.height) == (64, 64)
    assert "cropped and resized from 300x100 to 64x64" in prepared.note


def test_outpaint_and_upscale_sizes_are_multiples_of_8():
    assert outpaint_size(512, 512, (100, 0, 0, 0)) == (616, 512)
    assert outpaint_pads(512, 512, (3, 3, 0, 5)) == (4, 4, 0, 8)
    assert outpaint_size(512, 512, (0, 0, 64, 64)) == (512, 640)
    assert upscale_size(512, 384, 2.0) == (1024, 768)
    assert upscale_size(520, 384, 1.5) == (784, 576)


# -- masks --------------------------------------------------------------------------------


def init_of(width: int = 128, height: int = 96, alpha: bool = False) -> PreparedImage:
    image = Image.new("RGBA" if alpha else "RGB", (width, height), (50, 60, 70))
    if alpha:
        image.putpixel((5, 5), (0, 0, 0, 0))
    return prepare_init(encode(image), max_pixels=LIMIT, pixel_cap=CAP)


def test_mask_from_an_attachment_of_the_same_shape_is_resized():
    mask = Image.new("L", (256, 192), 0)
    mask.paste(255, (0, 0, 128, 192))
    prepared = prepare_mask(encode(mask), init_of(), max_pixels=LIMIT)
    image = decoded(prepared.png)
    assert image.mode == "L"
    assert image.size == (128, 96)
    assert image.getpixel((10, 10)) == 255
    assert image.getpixel((100, 10)) == 0
    assert prepared.note == "Mask resized from 256x192 to 128x96."


def test_mask_of_another_shape_is_refused_naming_both_sizes():
    with pytest.raises(InvalidParams, match="128x128 but the image is 128x96"):
        prepare_mask(encode(Image.new("L", (128, 128), 255)), init_of(), max_pixels=LIMIT)


def test_rgba_mask_uses_luminance_where_opaque():
    mask = Image.new("RGBA", (128, 96), (255, 255, 255, 0))  # transparent white: keep
    mask.paste((255, 255, 255, 255), (0, 0, 10, 10))
    image = decoded(prepare_mask(encode(mask), init_of(), max_pixels=LIMIT).png)
    assert image.getpixel((5, 5)) == 255
    assert image.getpixel((30, 30)) == 0


def test_mask_from_transparency_and_refusals():
    from_alpha = decoded(prepare_mask(None, init_of(alpha=True), max_pixels=LIMIT).png)
    assert from_alpha.getpixel((5, 5)) == 255
    assert from_alpha.getpixel((20, 20)) == 0
    with pytest.raises(InvalidParams, match="Attach a mask, or an image with transparent pixels"):
        prepare_mask(None, init_of(), max_pixels=LIMIT)
    with pytest.raises(InvalidParams, match="mask is empty"):
        prepare_mask(encode(Image.new("L", (128, 96), 0)), init_of(), max_pixels=LIMIT)
    with pytest.raises(UnreadableImage):
        prepare_mask(b"not an image", init_of(), max_pixels=LIMIT)


def test_a_long_thin_strip_is_refused_before_any_resize():
    from engine.imaging.attachments import prepare_init

    strip = io.BytesIO()
    Image.new("RGB", (4000, 1)).save(strip, format="PNG")
    with pytest.raises(InvalidParams, match="too long and thin"):
        prepare_init(strip.getvalue(), max_pixels=10**8, pixel_cap=512 * 512)

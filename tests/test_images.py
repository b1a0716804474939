"""Encoding results: infotext in PNG, and re-encoding that never drops a file."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bot.jobs.contracts import StoredImage
from cogs.ui.rendering import encode_for_upload
from engine.imaging.images import (
    EXIF_IFD,
    EXIF_USER_COMMENT,
    encode_png,
    fit_to_limit,
    read_png_infotext,
)

INFOTEXT = (
    "a cat, (fluffy:1.2)\nNegative prompt: dog\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512"
)


def noisy_image(size: int = 512) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def webp_infotext(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        comment = image.getexif().get_ifd(EXIF_IFD)[EXIF_USER_COMMENT]
    assert comment.startswith(b"UNICODE\0")
    return comment[8:].decode("utf-16-be")


def test_png_carries_the_parameters_chunk():
    png = encode_png(noisy_image(64), INFOTEXT)
    assert read_png_infotext(png) == INFOTEXT


def test_a_file_that_fits_is_left_alone():
    png = encode_png(noisy_image(64), INFOTEXT)
    assert fit_to_limit(png, INFOTEXT, len(png)).data == png


def test_an_oversized_png_becomes_a_webp_under_the_limit_with_its_parameters():
    png = encode_png(noisy_image(512), INFOTEXT)  # noise compresses badly: ~790 kB
    limit = len(png) // 3
    encoded = fit_to_limit(png, INFOTEXT, limit)
    assert encoded.extension == "webp"
    assert len(encoded.data) <= limit
    assert webp_infotext(encoded.data) == INFOTEXT
    assert Image.open(io.BytesIO(encoded.data)).size == (512, 512)


def test_a_tiny_limit_shrinks_the_image_rather_than_dropping_it():
    png = encode_png(noisy_image(512), INFOTEXT)
    encoded = fit_to_limit(png, INFOTEXT, 20_000)
    assert len(encoded.data) <= 20_000
    assert Image.open(io.BytesIO(encoded.data)).size[0] < 512


def test_four_images_share_the_request_limit(tmp_path, monkeypatch):
    import cogs.ui.rendering

    png = encode_png(noisy_image(512), INFOTEXT)
    monkeypatch.setattr(cogs.ui.rendering, "REQUEST_LIMIT", 2 * len(png))
    images = [StoredImage(i, tmp_path / f"{i}.png", 512, 512, INFOTEXT, png) for i in range(4)]
    encoded = encode_for_upload(images, file_limit=10 * 1024 * 1024)  # each would fit alone
    assert len(encoded) == 4
    assert all(e.extension == "webp" for e in encoded)
    assert sum(len(e.data) for e in encoded) <= 2 * len(png)


def test_infotext_is_read_back_from_png_and_from_reencoded_webp():
    from engine.imaging.images import read_infotext

    png = encode_png(noisy_image(256), INFOTEXT)
    assert read_infotext(png) == INFOTEXT
    webp = fit_to_limit(png, INFOTEXT, len(png) // 4)
    assert webp.extension == "webp"
    assert read_infotext(webp.data) == INFOTEXT

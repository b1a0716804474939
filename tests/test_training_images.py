"""/train's inputs without torch: parameters, names, prices, photos and zips."""

from __future__ import annotations

import io
import json
import stat
import time
import zipfile
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from engine.api.params import InvalidParams
from engine.api.training_params import (
    METHOD_DEFAULTS,
    TrainingLimits,
    TrainingParams,
    check_training,
    default_token,
    make_training_params,
    sample_prompts,
    sanitize_name,
    training_price_units,
)
from engine.imaging.training_images import (
    collect_training_images,
    is_safe_member_name,
)

LIMITS = dict(resolution=64, max_images=5, min_images=3, max_pixels=4096 * 4096)
ZIP_LIMIT = 25 * 2**20


def photo(seed: int = 0, size: tuple[int, int] = (96, 64), fmt: str = "PNG", **save) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def photos(count: int) -> list[tuple[str, bytes]]:
    return [(f"p{i}.png", photo(i)) for i in range(count)]


def zipped(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def collect(files: list[tuple[str, bytes]], **overrides):
    return collect_training_images(files, **{**LIMITS, "max_zip_bytes": ZIP_LIMIT, **overrides})


# -- Names and parameters ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Rex", "rex"),
        ("my dog Rex", "my-dog-rex"),
        ("  Zoë  ", "zoe"),
        ("../../etc/passwd", "etcpasswd"),
        ("C:\\Windows\\x.safetensors", "cwindowsxsafetensors"),
        ("a.b.c", "abc"),
        ("--__x__--", "x"),
        ("a  --  b", "a-b"),
        ("x" * 80, "x" * 32),
        ("snake_case-ok9", "snake_case-ok9"),
    ],
)
def test_sanitize_name_keeps_only_safe_characters(text, name):
    assert sanitize_name(text) == name
    assert "/" not in name
    assert "\\" not in name
    assert "." not in name


@pytest.mark.parametrize("text", ["", "   ", "...", "../", "日本語", "🐶", "con", "NUL", "lpt1"])
def test_sanitize_name_refuses_rather_than_returning_nothing(text):
    with pytest.raises(InvalidParams):
        sanitize_name(text)


def test_defaults_and_the_rare_token():
    lora = make_training_params(name="My Dog", model="sd15", resolution=512, seed=1)
    assert (lora.name, lora.token, lora.method) == ("my-dog", "zwxmydog", "lora")
    assert (lora.steps, lora.rank, lora.learning_rate) == (600, 8, 1e-4)
    embedding = make_training_params(
        name="rex", model="sd15", resolution=512, seed=1, method="embedding"
    )
    assert embedding.learning_rate == METHOD_DEFAULTS["embedding"].learning_rate == 5e-3
    assert default_token("R2-D2") == "zwxr2d2"
    check_training(lora, TrainingLimits())
    check_training(embedding, TrainingLimits())


def test_params_round_trip_through_json():
    params = make_training_params(
        name="rex",
        model="sd15",
        resolution=512,
        seed=7,
        class_word="Dog",
        prior_preservation=True,
        image_keys=("a", "b", "c"),
    )
    again = TrainingParams.from_dict(json.loads(json.dumps(params.to_dict())))
    assert again == params
    assert params.instance_prompt == "a photo of zwxrex dog"
    assert params.file_name == "rex.safetensors"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (dict(steps=5000), "Steps must be 1-2000"),
        (dict(rank=128), "Rank must be 1-64"),
        (dict(learning_rate=0.5), "Learning rate"),
        (dict(resolution=500), "multiple of 64"),
        (dict(token="a b"), "The token"),
        (dict(token="x"), "The token"),
        (dict(class_word="dog; rm -rf"), "class word"),
        (dict(token="dog", class_word="dog"), "differ"),
        (dict(prior_preservation=True, class_word=""), "needs a class word"),
        (dict(prior_preservation=True, class_images=0), "Class images"),
        (dict(image_keys=("a", "b")), "needs 3-20 images, not 2"),
        (dict(name="../x"), "name"),
        (dict(method="dreambooth"), "Unknown method"),
    ],
)
def test_check_training_names_the_bad_value(change, words):
    params = replace(
        make_training_params(name="rex", model="sd15", resolution=512, seed=1, class_word="dog"),
        **change,
    )
    with pytest.raises(InvalidParams, match=words):
        check_training(params, TrainingLimits())


def test_embeddings_are_refused_for_sdxl():
    params = make_training_params(
        name="rex", model="xl", resolution=1024, seed=1, method="embedding"
    )
    with pytest.raises(InvalidParams, match="use a LoRA"):
        check_training(params, TrainingLimits(), family="sdxl")


def test_price_is_per_step_and_counts_class_images():
    params = make_training_params(name="rex", model="sd15", resolution=512, seed=1, steps=100)
    assert training_price_units(replace(params, steps=200)) == 2 * training_price_units(params)
    prior = replace(params, prior_preservation=True, class_word="dog")
    assert training_price_units(prior) == 2 * training_price_units(params)
    assert training_price_units(prior, class_images_missing=10) > training_price_units(prior)
    # 600 default steps at 512 cost about as much as 40 standard images
    assert 30 < training_price_units(replace(params, steps=600)) < 50


# -- Photos ---------------------------------------------------------------------------------


def test_photos_are_centre_cropped_square_pngs_at_the_resolution():
    result = collect(photos(3))
    assert len(result.images) == 3
    assert result.skipped == []
    for data in result.images:
        with Image.open(io.BytesIO(data)) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (64, 64))


def test_exif_rotation_is_applied_before_cropping():
    # 64 wide, 128 tall once upright: a red top half, blue bottom half; stored rotated.
    upright = np.zeros((128, 64, 3), dtype=np.uint8)
    upright[:64, :, 0] = 255
    upright[64:, :, 2] = 255
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": undoes ROTATE_90 (counter-clockwise)
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=95)
    result = collect([("r.jpg", buffer.getvalue()), *photos(2)])
    with Image.open(io.BytesIO(result.images[0])) as image:
        pixels = np.asarray(image)
    # the centre crop of an upright picture shows the seam horizontally across the middle
    assert pixels[5, 32, 0] > 200
    assert pixels[5, 32, 2] < 60
    assert pixels[58, 32, 2] > 200
    assert pixels[58, 32, 0] < 60


def test_transparent_cut_outs_train_on_white():
    cut_out = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    buffer = io.BytesIO()
    cut_out.save(buffer, format="PNG")
    result = collect([("cut.png", buffer.getvalue()), *photos(2)])
    with Image.open(io.BytesIO(result.images[0])) as image:
        assert image.getpixel((0, 0)) == (255, 255, 255)


def test_two_photos_are_too_few():
    with pytest.raises(InvalidParams, match="at least 3 usable photos; I found 2"):
        collect(photos(2))


def test_too_many_photos_are_refused():
    with pytest.raises(InvalidParams, match="at most 5"):
        collect(photos(6))


def test_non_images_are_skipped_by_name_and_counted_out():
    result = collect([*photos(3), ("notes.txt", b"hello")])
    assert len(result.images) == 3
    assert result.skipped == ["notes.txt: That file is not an image I can read."]
    with pytest.raises(InvalidParams, match=r"found 2\. Skipped: notes\.txt"):
        collect([*photos(2), ("notes.txt", b"hello")])


def test_duplicates_and_tiny_pictures_are_skipped():
    tiny = ("tiny.png", photo(9, size=(16, 16)))
    result = collect([*photos(3), ("again.png", photos(1)[0][1]), tiny])
    assert len(result.images) == 3
    assert "again.png: the same picture twice" in result.skipped
    assert any(note.startswith("tiny.png: it is 16x16") for note in result.skipped)


# -- Zips -----------------------------------------------------------------------------------


def test_a_zip_of_photos_works_and_ignores_archiver_junk():
    archive = zipped(
        [
            *[(f"photos/{name}", data) for name, data in photos(3)],
            ("__MACOSX/photos/._p0.png", b"junk"),
            (".DS_Store", b"junk"),
        ]
    )
    result = collect([("set.zip", archive)])
    assert len(result.images) == 3
    assert result.skipped == []


def test_a_zip_and_photos_together_are_refused():
    with pytest.raises(InvalidParams, match="not both"):
        collect([("set.zip", zipped(photos(3))), *photos(1)])


@pytest.mark.parametrize(
    "name", ["../evil.png", "a/../../evil.png", "/etc/evil.png", "C:/evil.png", "..\\evil.png"]
)
def test_zip_entries_leaving_the_archive_are_refused(name):
    with pytest.raises(InvalidParams, match="unsafe entry"):
        collect([("set.zip", zipped([*photos(3), (name, photo(7))]))])


def test_safe_member_names():
    assert is_safe_member_name("photos/a.png")
    assert is_safe_member_name("a..b.png")  # dots inside a name are not a parent directory
    assert not is_safe_member_name("a/../../b.png")
    assert not is_safe_member_name("a\x00.png")


def test_zip_symlinks_are_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in photos(3):
            archive.writestr(name, data)
        link = zipfile.ZipInfo("link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(InvalidParams, match="symbolic link"):
        collect([("set.zip", buffer.getvalue())])


def test_a_zip_bomb_is_refused_without_being_extracted():
    archive = zipped([*photos(3), ("bomb.bmp", bytes(50 * 2**20))])
    assert len(archive) < 200 * 1024  # 50 MB of zeros deflate to ~50 KB
    started = time.perf_counter()
    with pytest.raises(InvalidParams, match="expands"):
        collect([("set.zip", archive)])
    assert time.perf_counter() - started < 0.5  # read the directory, inflated nothing


def test_zip_limits_on_size_entries_and_total():
    archive = zipped(photos(3))
    with pytest.raises(InvalidParams, match="the limit is"):
        collect([("set.zip", archive)], max_zip_bytes=1000)
    with pytest.raises(InvalidParams, match="has 4 files; the limit is 3"):
        collect([("set.zip", zipped(photos(4)))], max_zip_entries=3)
    stored = zipped(photos(3), method=zipfile.ZIP_STORED)
    with pytest.raises(InvalidParams, match="expands to"):
        collect([("set.zip", stored)], max_uncompressed=1000)


def test_a_damaged_zip_gets_a_clear_answer():
    with pytest.raises(InvalidParams, match="cannot be read"):
        collect([("set.zip", b"PK\x03\x04" + b"\x00" * 100)])


def test_sample_prompts_carry_the_token():
    params = make_training_params(
        name="rex", model="sd15", resolution=512, seed=1, class_word="dog"
    )
    prompts = sample_prompts(params)
    assert prompts[0] == "a photo of zwxrex dog"
    assert all("zwxrex dog" in prompt for prompt in prompts)

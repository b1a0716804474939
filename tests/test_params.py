"""Checking what members ask for, before any work is done."""

from __future__ import annotations

import pytest

from bot.generation.options import DreamOptions, resolve_options
from engine.api.checks import check_params, parse_size
from engine.api.params import GenerationParams, InvalidParams
from engine.api.specs import ModelSpec
from tests.factories import standard_params

MODELS = {
    "sd15": ModelSpec("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    "xl": ModelSpec("xl", "stabilityai/stable-diffusion-xl-base-1.0"),
    "small": ModelSpec("small", "/m/small", max_pixels=256 * 256, default_size=(256, 256)),
}


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512x768", (512, 768)),
        (" 768 X 512 ", (768, 512)),
        ("640×480", (640, 480)),
        ("64*64", (64, 64)),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "512", "512x", "ax512", "512x512x3", "-512x512", "123456x1"])
def test_parse_size_refuses_other_text(text):
    with pytest.raises(InvalidParams, match="WIDTHxHEIGHT"):
        parse_size(text)


def test_defaults_follow_the_model():
    sd15 = resolve_options(DreamOptions("a cat"), MODELS, "sd15", 100)
    xl = resolve_options(DreamOptions("a cat", model="xl"), MODELS, "sd15", 100)
    assert (sd15.width, sd15.height, xl.width, xl.height) == (512, 512, 1024, 1024)
    assert (sd15.steps, sd15.cfg, sd15.sampler, sd15.count) == (20, 7.0, "Euler a", 1)
    assert 0 <= sd15.seed < 2**32
    assert resolve_options(DreamOptions("a cat", seed=-1), MODELS, "sd15", 100).seed >= 0
    assert resolve_options(DreamOptions("a cat", seed=0), MODELS, "sd15", 100).seed == 0


def test_default_cap_is_one_and_a_half_times_the_native_side():
    assert MODELS["sd15"].pixel_cap() == 768 * 768
    assert MODELS["xl"].pixel_cap() == 1536 * 1536
    assert MODELS["small"].pixel_cap() == 256 * 256


def good(**overrides) -> GenerationParams:
    return standard_params(**overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prompt": " \n "}, "The prompt is empty."),
        ({"prompt": "x" * 101}, "The prompt is 101 characters; the limit is 100."),
        ({"negative": "x" * 101}, "The negative prompt is 101 characters"),
        ({"model": "nope"}, "Unknown model 'nope'. Models: sd15, small, xl."),
        ({"sampler": "Euler z"}, "Unknown sampler 'Euler z'."),
        ({"steps": 0}, "Steps must be 1-150, not 0."),
        ({"steps": 151}, "Steps must be 1-150"),
        ({"cfg": 30.5}, "CFG scale must be 0-30, not 30.5."),
        ({"count": 5}, "Count must be 1-4"),
        ({"seed": 2**32}, "Seed must be 0-4294967295"),
        ({"width": 513}, "must be multiples of 8"),
        ({"width": 32}, "at least 64"),
        ({"width": 1024, "height": 1024}, "model sd15 allows at most 589,824"),
        ({"model": "small", "width": 512}, "model small allows at most 65,536"),
    ],
)
def test_bad_values_are_named(overrides, message):
    with pytest.raises(InvalidParams, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_params(good(**overrides), MODELS, 100)


def test_good_values_pass():
    check_params(good(), MODELS, 100)
    check_params(good(model="xl", width=1344, height=768, steps=150, cfg=0.0, count=4), MODELS, 100)


def region(**overrides) -> GenerationParams:
    return good(**{"mode": "inpaint", "init_image": "k", "mask_prompt": "the sky", **overrides})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mask_prompt": "x" * 201}, "The region is 201 characters; the limit is 200."),
        ({"mask_prompt": " "}, "Say what to change"),
        ({"mask_cell": "upper"}, "Grid cell 'upper' is not one of"),
        ({"mask_image": "m"}, "A region in words and a mask image cannot be used together."),
    ],
)
def test_bad_regions_are_named(overrides, message):
    with pytest.raises(InvalidParams, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_params(region(**overrides), MODELS, 100)


def test_a_region_is_part_of_what_a_batch_shares_and_of_what_is_stored():
    check_params(region(mask_cell="top-left", mask_preview=True), MODELS, 100)
    keys = {
        region().batch_key(),
        region(mask_prompt="her hat").batch_key(),
        region(mask_cell="top").batch_key(),
        region(mask_preview=True).batch_key(),
    }
    assert len(keys) == 4
    stored = region(mask_cell="top", mask_preview=True)
    assert GenerationParams.from_dict(stored.to_dict()) == stored
    # A job stored before Vary (Region) has none of its fields.
    old = {k: v for k, v in good().to_dict().items() if not k.startswith("mask_")}
    assert GenerationParams.from_dict(old).has_region is False

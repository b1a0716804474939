"""A1111's infotext, written and read exactly as A1111 does."""

from __future__ import annotations

import pytest

from engine.api.infotext import build_infotext, params_from_infotext, parse_infotext, quote
from engine.api.params import GenerationParams, InvalidParams
from tests.factories import standard_params


def params(**overrides) -> GenerationParams:
    return standard_params(**overrides)


def test_written_like_a1111():
    text = build_infotext(
        params(prompt="a (red:1.2) fox", negative="blurry", seed=42, cfg=7.5),
        seed=42,
        model_hash="6ce0161689",
    )
    assert text == (
        "a (red:1.2) fox\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 42, "
        "Size: 512x512, Model hash: 6ce0161689, Model: sd15"
    )


def test_variation_and_clip_skip_written_where_a1111_writes_them():
    p = params(variation_seed=99, variation_strength=0.3, clip_skip=2, count=2)
    assert build_infotext(p, seed=42, model_hash="6ce0161689", variation_seed=100) == (
        "a cat\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 42, "
        "Size: 512x512, Model hash: 6ce0161689, Model: sd15, Variation seed: 100, "
        "Variation seed strength: 0.3, Clip skip: 2"
    )
    # The job's own variation seed when the image's is not given.
    assert "Variation seed: 99," in build_infotext(p, seed=42, model_hash=None)


def test_unused_options_are_not_written():
    text = build_infotext(
        params(variation_seed=99, variation_strength=0.0, clip_skip=1), seed=1, model_hash=None
    )
    assert text == build_infotext(params(), seed=1, model_hash=None)
    for key in ("Variation", "Clip skip", "Prompt syntax"):
        assert key not in text
    subprompts = build_infotext(params(prompt_syntax="subprompt"), seed=1, model_hash=None)
    assert subprompts.endswith(", Model: sd15, Prompt syntax: subprompt")


def test_no_negative_line_and_no_hash_when_unknown():
    assert build_infotext(params(), seed=1, model_hash=None) == (
        "a cat\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, "
        "Size: 512x512, Model: sd15"
    )


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", "plain"),
        ("a, b", '"a, b"'),
        ("k: v", '"k: v"'),
        ('say "hi", ok', '"say \\"hi\\", ok"'),
    ],
)
def test_values_with_separators_are_json_quoted(value, quoted):
    assert quote(value) == quoted


@pytest.mark.parametrize(
    "p",
    [
        params(),
        params(prompt="line one\nline two, with: colons", negative="neg\nmore neg"),
        params(prompt="emoji 🐱 and ünïcödé", sampler="DPM++ 2M SDE Karras", cfg=0.0, steps=150),
        params(cfg=12.345, width=768, height=1024, seed=4294967295, model="my model, v2: final"),
        params(prompt="(masterpiece:1.2), [ugly], \\(escaped\\) BREAK next chunk"),
        params(clip_skip=2),
        params(variation_seed=99, variation_strength=0.25, clip_skip=12),
        params(variation_seed=0, variation_strength=1.0),
        params(prompt="cute dog:0.95 cyborg:0.85", prompt_syntax="subprompt"),
        params(prompt="cute dog:0.95 cyborg:0.85", prompt_syntax="auto"),
    ],
)
def test_round_trip(p):
    for model_hash in (None, "abcdef0123"):
        text = build_infotext(p, seed=p.seed, model_hash=model_hash)
        assert params_from_infotext(text) == p
        assert parse_infotext(text).values.get("Model hash") == model_hash


A1111_OLD = """masterpiece, best quality, 1girl, (blue hair:1.2), looking at viewer
Negative prompt: lowres, bad anatomy, (worst quality:1.4)
Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 3938270617, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, \
Hires upscale: 2, Hires upscaler: Latent, Version: v1.6.0"""

A1111_NEW = """a photo of an astronaut riding a horse on mars
Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, Seed: 1234, \
Size: 1024x1024, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, \
Lora hashes: "detail: 7f6d4a7a1c2b, style: 1a2b3c4d5e6f", Version: v1.10.1"""

A1111_MULTILINE = """portrait of a knight,
dramatic lighting
Negative prompt: cartoon,
3d render
Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 7, Size: 512x512, Model hash: 45dee52b"""


def test_parses_infotext_written_by_a1111():
    old = params_from_infotext(A1111_OLD)
    assert old.prompt.startswith("masterpiece")
    assert old.negative.endswith("(worst quality:1.4)")
    # A1111 before 1.9 wrote one combined name; it reads as today's sampler and schedule type.
    assert (old.steps, old.sampler, old.cfg, old.seed) == (28, "DPM++ 2M", 7.0, 3938270617)
    assert old.schedule == "Karras"
    assert (old.width, old.height, old.model) == (512, 768, "v1-5-pruned-emaonly")
    assert parse_infotext(A1111_OLD).values["Clip skip"] == "2"
    assert old.clip_skip == 2
    assert (old.variation_seed, old.variation_strength, old.prompt_syntax) == (None, 0.0, "a1111")

    new = params_from_infotext(A1111_NEW)
    assert (new.sampler, new.schedule) == ("DPM++ 2M", "Karras")
    assert (new.cfg, new.width, new.negative) == (5.5, 1024, "")
    assert (
        parse_infotext(A1111_NEW).values["Lora hashes"]
        == "detail: 7f6d4a7a1c2b, style: 1a2b3c4d5e6f"
    )

    multi = params_from_infotext(A1111_MULTILINE)
    assert multi.prompt == "portrait of a knight,\ndramatic lighting"
    assert multi.negative == "cartoon,\n3d render"
    assert multi.model == ""


A1111_VARIATION = """a castle on a hill
Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 6ce0161689, \
Model: v1-5-pruned-emaonly, Variation seed: 987654321, Variation seed strength: 0.35, \
Seed resize from: 768x768, Denoising strength: 0.5, Clip skip: 2, Version: v1.10.1"""


def test_parses_variation_seeds_written_by_a1111():
    p = params_from_infotext(A1111_VARIATION)
    assert (p.seed, p.variation_seed, p.variation_strength) == (1234, 987654321, 0.35)
    assert (p.clip_skip, p.prompt_syntax) == (2, "a1111")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("just a prompt", "no 'Size'"),
        ("p\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: x, Size: 1x1", "unreadable value"),
        ("p\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: big", "Unreadable size"),
        (
            "p\nSteps: 2, Sampler: Euler, Seed: 1, Size: 8x8, CFG scale: 7, Clip skip: x",
            "unreadable",
        ),
        (
            "p\nSteps: 2, Sampler: Euler, Seed: 1, Size: 8x8, CFG scale: 7, Variation seed: 1.5",
            "unreadable value",
        ),
    ],
)
def test_bad_infotext_raises_invalid_params(text, message):
    with pytest.raises(InvalidParams, match=message):
        params_from_infotext(text)

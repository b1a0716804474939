"""Hires fix (issue 16): parameters, the two passes on the tiny model, and /dream's option."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bot.generation.options import DreamOptions, price_units, resolve_options
from engine.api.checks import check_params
from engine.api.hires import hires_size
from engine.api.infotext import params_from_infotext
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams, InvalidParams, Progress
from engine.api.specs import ModelSpec
from engine.imaging.images import read_png_infotext
from engine.pipelines.loading import LoadedModel, load_model
from engine.pipelines.txt2img import generate_batch
from tests.conftest import wait_until
from tests.discord_helpers import has_result
from tests.factories import tiny_params

MODELS = {"tiny": ModelSpec("tiny", "unused", max_pixels=128 * 128)}


@pytest.fixture(scope="module")
def loaded(tiny_sd1: Path) -> LoadedModel:
    return load_model(ModelSpec("tiny", str(tiny_sd1)), torch.device("cpu"), torch.float32)


def run(loaded: LoadedModel, *all_params: GenerationParams, seen: list | None = None) -> list:
    report = seen.append if seen is not None else lambda progress: None
    jobs = [EngineJob(i, p, report=report) for i, p in enumerate(all_params)]
    with torch.inference_mode():
        results = generate_batch(loaded, jobs, preview_interval=60.0)
    return [[image.png for image in result.images] for result in results]


def infotext(png: bytes) -> str:
    text = read_png_infotext(png)
    assert text is not None
    return text


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


# -- Parameters ---------------------------------------------------------------------------


def test_the_final_size_is_a1111s_and_old_rows_load_without_hires():
    assert hires_size(tiny_params(hires_scale=1.5, width=72, height=64)) == (104, 96)
    old = tiny_params().to_dict()
    for name in ("hires_scale", "hires_upscaler", "hires_steps", "hires_denoise"):
        del old[name]
    assert GenerationParams.from_dict(old) == tiny_params()
    hires = tiny_params(hires_scale=2, hires_steps=4)
    assert GenerationParams.from_dict(hires.to_dict()) == hires
    assert hires.batch_key() != tiny_params().batch_key()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hires_scale": 5}, "Hires upscale must be 1-4, not 5."),
        ({"hires_scale": 0.5}, "Hires upscale must be 1-4, not 0.5."),
        ({"hires_scale": 2, "width": 128}, "makes 256x128, 32,768 pixels; model tiny allows"),
        ({"hires_scale": 2, "hires_upscaler": "R-ESRGAN 4x+"}, "'R-ESRGAN 4x+' is not available"),
        ({"hires_scale": 2, "hires_denoise": 0}, "Hires denoising must be above 0"),
        ({"hires_scale": 2, "hires_steps": 151}, "Hires steps must be 0-150, not 151."),
        ({"hires_scale": 2, "control_type": "canny", "control_image": "k"}, "without ControlNet"),
    ],
)
def test_bad_hires_values_are_named_in_one_sentence(overrides, message):
    with pytest.raises(InvalidParams, match=re.escape(message)):
        check_params(tiny_params(**overrides), MODELS, 1500)


def test_a_results_image_buttons_keep_the_hires_record_and_run_without_it():
    upscale = tiny_params(hires_scale=2, mode="img2img", init_image="k")
    check_params(upscale, MODELS, 1500)
    assert not upscale.has_hires
    assert price_units(upscale) == price_units(replace(upscale, hires_scale=1.0))


def test_the_price_counts_both_passes():
    plain = price_units(tiny_params(steps=20))
    # A 2x hires pass at 0.5 denoise: 4 times the pixels for Euler a's 11 steps.
    assert price_units(tiny_params(steps=20, hires_scale=2, hires_denoise=0.5)) == pytest.approx(
        plain * (20 + 4 * 11) / 20
    )


def test_dream_options_set_hires_and_denoise_needs_it():
    options = DreamOptions("a cat", model="tiny", size=(64, 64), hires=2.0, hires_denoise=0.4)
    params = resolve_options(options, MODELS, "tiny", 1500)
    assert (params.hires_scale, params.hires_denoise, params.hires_upscaler) == (2, 0.4, "Latent")
    with pytest.raises(InvalidParams, match=r"Hires denoising needs a hires upscale\."):
        resolve_options(DreamOptions("a cat", hires_denoise=0.4), MODELS, "tiny", 1500)


# -- The engine ---------------------------------------------------------------------------


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_makes_the_scaled_size_and_differs_from_the_first_pass(loaded, upscaler):
    p = tiny_params(seed=3, hires_scale=2, hires_upscaler=upscaler)
    seen: list[Progress] = []
    [[png]] = run(loaded, p, seen=seen)
    image = Image.open(io.BytesIO(png))
    assert image.size == (128, 128)
    [[plain]] = run(loaded, tiny_params(seed=3))
    enlarged = (
        Image.open(io.BytesIO(plain)).convert("RGB").resize((128, 128), Image.Resampling.LANCZOS)
    )
    assert np.abs(pixels(png) - np.asarray(enlarged, dtype=np.int16)).max() > 10
    # One total over both passes: 3 steps, then Euler a's 3 at 0.7 denoise.
    assert [(s.step, s.total) for s in seen] == [(step, 6) for step in range(7)]
    info = infotext(png)
    assert "Size: 64x64" in info
    assert (
        f"Denoising strength: 0.7, RNG: CPU, Hires upscale: 2, Hires upscaler: {upscaler}" in info
    )


def test_same_seed_twice_is_identical_and_a_batch_gives_each_job_its_own(loaded):
    a = tiny_params(seed=5, hires_scale=1.5, hires_steps=2)
    b = tiny_params(seed=9, hires_scale=1.5, hires_steps=2, prompt="a dog")
    [[first]] = run(loaded, a)
    [[again]] = run(loaded, a)
    assert first == again
    [[alone_b]] = run(loaded, b)
    [[batch_a], [batch_b]] = run(loaded, a, b)
    assert np.abs(pixels(batch_a) - pixels(first)).max() <= 1
    assert np.abs(pixels(batch_b) - pixels(alone_b)).max() <= 1


def test_without_hires_the_images_are_todays(loaded):
    """Hires values other than the scale do nothing at scale 1: the same bytes."""
    [plain] = run(loaded, tiny_params(seed=4, count=2))
    [inert] = run(loaded, tiny_params(seed=4, count=2, hires_steps=7, hires_denoise=0.2))
    assert plain == inert
    assert "Hires" not in infotext(plain[0])
    assert "Denoising strength" not in infotext(plain[0])


def test_a_hires_png_reads_back_as_the_same_job(loaded):
    p = tiny_params(seed=6, hires_scale=1.5, hires_steps=2, hires_denoise=0.55)
    [[png]] = run(loaded, p)
    assert params_from_infotext(infotext(png)) == replace(p, model="tiny-sd1")


# -- Discord ------------------------------------------------------------------------------


async def test_dream_with_hires_posts_the_larger_image(sim):
    alice = sim.member("alice")
    result = await alice.slash(
        sim.channel, "dream", prompt="a cat", seed=2, steps=2, hires=2.0, hires_denoise=0.5
    )
    await wait_until(sim.env, lambda: has_result(result))
    [attachment] = result.response.attachments
    png = await attachment.read()
    assert Image.open(io.BytesIO(png)).size == (128, 128)
    info = infotext(png)
    assert "Size: 64x64" in info
    assert "Denoising strength: 0.5" in info
    assert "Hires upscale: 2" in info


async def test_dream_with_hires_past_the_pixel_cap_is_refused_and_not_charged(sim):
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "dream", prompt="a cat", size="128x128", hires=2.0)
    assert result.ephemeral
    assert "Hires upscale 2 makes 256x256" in result.response.content
    sim.expected_errors()
    assert await sim.bot.scheduler.jobs.with_status(*__import__("data").JobStatus) == []
    history = await alice.slash(sim.channel, "credits history")
    assert "charge" not in history.response.content

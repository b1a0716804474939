"""Hires fix (issue 16): parameters, the two passes on the tiny model, and /dream's option."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bot.generation.options import DreamOptions, price_units, resolve_options
from engine.api.checks import check_params
from engine.api.hires import (
    hires_size,
    latent_crop,
    parse_hires_size,
    second_pass_params,
    upscaled_size,
)
from engine.api.infotext import params_from_infotext
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams, InvalidParams, Progress
from engine.api.specs import ModelSpec
from engine.imaging.images import encode_png, read_png_infotext
from engine.pipelines.image_pipes import call_pipeline
from engine.pipelines.loading import LoadedModel, load_model
from engine.pipelines.txt2img import generate_batch
from tests.conftest import wait_until
from tests.discord_helpers import has_result, original_edits
from tests.factories import standard_params, tiny_params

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
    for name in list(old):
        if name.startswith("hires_"):
            del old[name]
    assert GenerationParams.from_dict(old) == tiny_params()
    hires = tiny_params(hires_scale=2, hires_steps=4)
    assert GenerationParams.from_dict(hires.to_dict()) == hires
    resized = tiny_params(hires_resize=(128, 96), hires_prompt="a dog", hires_cfg=5.0)
    assert GenerationParams.from_dict(json.loads(json.dumps(resized.to_dict()))) == resized
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
    needs = r"Hires denoising and a hires prompt need a hires upscale or size\."
    with pytest.raises(InvalidParams, match=needs):
        resolve_options(DreamOptions("a cat", hires_denoise=0.4), MODELS, "tiny", 1500)
    with pytest.raises(InvalidParams, match=needs):
        resolve_options(DreamOptions("a cat", hires_prompt="a dog"), MODELS, "tiny", 1500)


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


# -- Target size (A1111's "Resize width to / height to") ---------------------------------


@pytest.mark.parametrize(
    ("first", "resize", "upscaled", "crop", "final"),
    [
        ((512, 768), (1024, 0), (1024, 1536), (0, 0), (1024, 1536)),  # the aspect follows
        ((512, 768), (0, 1536), (1024, 1536), (0, 0), (1024, 1536)),
        ((512, 768), (1024, 1024), (1024, 1536), (0, 64), (1024, 1024)),  # cover, crop rows
        ((512, 768), (1536, 1024), (1536, 2304), (0, 160), (1536, 1024)),
        ((768, 512), (1024, 1024), (1536, 1024), (64, 0), (1024, 1024)),  # crop columns
        ((768, 512), (1000, 0), (1000, 666), (0, 0), (1000, 664)),  # whole latent pixels
        ((512, 512), (1000, 600), (1000, 1000), (0, 50), (1000, 600)),
    ],
)
def test_a_target_size_is_a1111s_arithmetic(first, resize, upscaled, crop, final):
    p = standard_params(width=first[0], height=first[1], hires_resize=resize)
    assert p.has_hires
    assert (upscaled_size(p), latent_crop(p), hires_size(p)) == (upscaled, crop, final)
    assert (second_pass_params(p).width, second_pass_params(p).height) == final


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hires_scale": 2, "hires_resize": (128, 128)}, "Choose a hires upscale or a hires size"),
        ({"hires_resize": (32, 0)}, "Hires size 32x0 is smaller than the first pass, 64x64."),
        ({"hires_resize": (48, 48)}, "Hires size 48x48 is smaller than the first pass, 64x64."),
        ({"hires_resize": (-8, 128)}, "Hires size -8x128: a side cannot be negative."),
        ({"hires_resize": (320, 0)}, "Hires size 320x0 is over 4 times the first pass, 64x64."),
        ({"hires_resize": (192, 0)}, "Hires size 192x0 makes 192x192, 36,864 pixels; model tiny"),
        ({"hires_scale": 2, "hires_sampler": "Nope"}, "Hires pass: Unknown sampler 'Nope'."),
        (
            {"hires_scale": 2, "hires_sampler": "DDIM", "hires_schedule": "Karras"},
            "Hires pass: DDIM takes no schedule type",
        ),
        ({"hires_scale": 2, "hires_cfg": 31.0}, "Hires CFG scale must be 0-30, not 31."),
        ({"hires_scale": 2, "hires_prompt": "x" * 1501}, "The hires prompt is 1501 characters"),
        (
            {"hires_scale": 2, "hires_negative": "y" * 1501},
            "The hires negative prompt is 1501 characters; the limit is 1500.",
        ),
        (
            {"hires_scale": 2, "hires_negative": "(dog:1.2.3)"},
            "The weight 1.2.3 in the hires negative prompt is not a number A1111 can read",
        ),
        (
            {"hires_scale": 2, "prompt": "a cat <lora:ink:0.8>", "hires_prompt": "a cat"},
            "A hires prompt must have the same <lora:...> tags as the prompt here.",
        ),
    ],
)
def test_bad_target_sizes_prompts_and_samplers_are_named(overrides, message):
    with pytest.raises(InvalidParams, match=re.escape(message)):
        check_params(tiny_params(**overrides), MODELS, 1500)


def test_a_hires_prompt_with_the_prompts_loras_and_a_kept_aspect_pass():
    same_loras = tiny_params(
        hires_scale=2, prompt="a cat <lora:ink:0.8>", hires_prompt="<lora:ink:0.8> a dog"
    )
    check_params(same_loras, MODELS, 1500)
    check_params(tiny_params(hires_resize=(128, 64)), MODELS, 1500)  # 2x, then a crop


@pytest.mark.parametrize("text", ["big", "0x0", "1024", "x1024"])
def test_a_bad_hires_size_is_refused_in_one_sentence(text):
    with pytest.raises(InvalidParams, match=r"^Hires size .* is not WIDTHxHEIGHT \(one side"):
        parse_hires_size(text)


def test_dream_options_set_a_target_size_but_never_with_an_upscale():
    options = DreamOptions("a cat", model="tiny", size=(64, 64), hires_size=(128, 0))
    params = resolve_options(options, MODELS, "tiny", 1500)
    assert (params.hires_resize, params.hires_scale, hires_size(params)) == (
        (128, 0),
        1,
        (128, 128),
    )
    both = replace(options, hires=2.0)
    with pytest.raises(
        InvalidParams, match=r"^Choose a hires upscale or a hires size, not both\.$"
    ):
        resolve_options(both, MODELS, "tiny", 1500)
    prompted = replace(options, hires_prompt="  a dog  ")
    assert resolve_options(prompted, MODELS, "tiny", 1500).hires_prompt == "a dog"


def test_the_price_follows_the_target_size_and_the_hires_sampler():
    plain = price_units(tiny_params(steps=20))
    # 2x the side, then cropped to 128x64: twice the pixels, for Euler a's 15 steps at 0.7.
    cropped = price_units(tiny_params(steps=20, hires_resize=(128, 64)))
    assert cropped == pytest.approx(plain * (20 + 2 * 15) / 20)
    assert price_units(tiny_params(steps=20, hires_resize=(128, 0))) == price_units(
        tiny_params(steps=20, hires_scale=2)
    )
    # DDIM runs t_enc - 1 = 13 steps at 0.7 where Euler a runs 15.
    ddim = price_units(tiny_params(steps=20, hires_scale=2, hires_sampler="DDIM"))
    assert ddim == pytest.approx(plain * (20 + 4 * 13) / 20)


def test_the_second_pass_takes_the_hires_prompts_sampler_schedule_and_cfg():
    p = tiny_params(
        prompt="a cat",
        negative="blurry",
        sampler="DPM++ 2M",
        schedule="Karras",
        hires_scale=2,
        hires_prompt="a cat, detailed fur",
        hires_sampler="DDIM",
        hires_cfg=4.5,
    )
    second = second_pass_params(p)
    assert (second.prompt, second.negative) == ("a cat, detailed fur", "blurry")
    # DDIM takes no schedule type: it runs its own, not the first pass's Karras.
    assert (second.sampler, second.schedule, second.cfg) == ("DDIM", "Automatic", 4.5)
    same = second_pass_params(replace(p, hires_sampler="Euler", hires_cfg=None))
    assert (same.sampler, same.schedule, same.cfg) == ("Euler", "Karras", 7.0)


# -- The engine: target size, hires prompts and samplers, variations, cancelling ----------


@pytest.mark.parametrize(
    ("upscaler", "resize", "size"),
    [("Latent", (128, 96), (128, 96)), ("Lanczos", (96, 0), (96, 96))],
)
def test_a_target_size_is_made_and_reads_back(loaded, upscaler, resize, size):
    p = tiny_params(seed=3, steps=2, hires_resize=resize, hires_upscaler=upscaler)
    [[png]] = run(loaded, p)
    assert Image.open(io.BytesIO(png)).size == size
    info = infotext(png)
    assert "Size: 64x64, " in info
    assert f"Hires resize: {resize[0]}x{resize[1]}, Hires upscaler: {upscaler}" in info
    assert "Hires upscale:" not in info
    assert params_from_infotext(info) == replace(p, model="tiny-sd1")


def test_a_hires_prompt_repaints_the_second_pass_only_where_it_differs(loaded):
    base = tiny_params(seed=4, steps=2, hires_scale=1.5)
    same = replace(base, hires_prompt=base.prompt)
    dog = replace(base, hires_prompt="a dog, [sitting:standing:0.5]", hires_negative="blurry")
    [[plain], [unchanged], [other]] = run(loaded, base, same, dog)
    assert unchanged == plain  # A1111's empty hires prompt is the prompt: the same job
    assert "Hires prompt" not in infotext(plain)
    assert np.abs(pixels(other) - pixels(plain)).max() > 10
    info = infotext(other)
    assert 'Hires prompt: "a dog, [sitting:standing:0.5]", Hires negative prompt: blurry' in info
    assert params_from_infotext(info) == replace(dog, model="tiny-sd1")


def test_a_hires_sampler_and_cfg_run_and_read_back(loaded):
    base = tiny_params(seed=5, steps=2, hires_scale=1.5)
    own = replace(base, hires_sampler="DPM++ 2M", hires_schedule="Karras", hires_cfg=3.0)
    [[plain]] = run(loaded, base)
    [[png]] = run(loaded, own)
    assert np.abs(pixels(png) - pixels(plain)).max() > 2  # 0 if the hires keys did nothing
    info = infotext(png)
    assert "Hires sampler: DPM++ 2M, Hires CFG Scale: 3, Hires schedule type: Karras" in info
    assert params_from_infotext(info) == replace(own, model="tiny-sd1")


def test_a_variation_carries_into_the_second_pass_as_a1111s(loaded):
    # Strength 1 is the variation seed's own noise in both passes, A1111's subseed logic; a
    # deterministic sampler draws nothing else, so it is that seed's image.
    euler = dict(steps=2, sampler="Euler", hires_scale=1.5)
    [[blended]] = run(loaded, tiny_params(seed=3, variation_seed=8, variation_strength=1, **euler))
    [[own]] = run(loaded, tiny_params(seed=8, **euler))
    assert np.abs(pixels(blended) - pixels(own)).max() <= 1
    # A batch of variations (one seed, variation seeds counted up) gives each image alone.
    batch = tiny_params(seed=3, count=2, steps=2, variation_seed=20, variation_strength=0.6)
    batch = replace(batch, hires_scale=1.5)
    [images] = run(loaded, batch)
    for index, png in enumerate(images):
        [[alone]] = run(loaded, replace(batch, count=1, variation_seed=20 + index))
        assert np.abs(pixels(png) - pixels(alone)).max() <= 1
        assert f"Variation seed: {20 + index}, Variation seed strength: 0.6" in infotext(png)
    assert np.abs(pixels(images[0]) - pixels(images[1])).max() > 10


def test_a_job_cancelled_in_the_first_pass_gets_no_second_pass(loaded, monkeypatch):
    from engine.pipelines import hires

    painted: list[int] = []  # the jobs whose second pass calls the img2img pipeline

    def spied(run, pipe, **inputs):
        painted.append(run.job.job_id)
        return call_pipeline(run, pipe, **inputs)

    monkeypatch.setattr(hires, "call_pipeline", spied)
    cancelled = tiny_params(seed=6, steps=3, hires_scale=1.5)
    kept = replace(cancelled, seed=7, prompt="a dog")
    seen: list[Progress] = []
    job = EngineJob(1, cancelled)

    def cancel_in_the_first_pass(progress: Progress) -> None:
        seen.append(progress)
        if progress.step == 1:
            job.cancel.set()

    job.report = cancel_in_the_first_pass
    other_seen: list[Progress] = []
    other = EngineJob(2, kept, report=other_seen.append)
    with torch.inference_mode():
        gone, done = generate_batch(loaded, [job, other], preview_interval=60.0)
    assert gone.images == []
    assert painted == [2]  # never started for the cancelled job
    assert max(progress.step for progress in seen) == cancelled.steps  # its first pass only
    total = other_seen[-1].total
    assert other_seen[-1].step == total > kept.steps  # the other job ran both passes
    [[alone]] = run(loaded, kept)
    assert np.abs(pixels(done.images[0].png) - pixels(alone)).max() <= 1


async def test_dream_with_a_hires_size_posts_that_size(sim):
    alice = sim.member("alice")
    result = await alice.slash(
        sim.channel,
        "dream",
        prompt="a cat",
        seed=2,
        steps=2,
        hires_size="128x96",
    )
    await wait_until(sim.env, lambda: has_result(result))
    png = await result.response.attachments[0].read()
    assert Image.open(io.BytesIO(png)).size == (128, 96)
    info = infotext(png)
    assert "Hires resize: 128x96, Hires upscaler: Latent" in info


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"hires": 2.0, "hires_size": "128x128"},
            "Choose a hires upscale or a hires size, not both.",
        ),
        ({"hires_size": "big"}, "Hires size 'big' is not WIDTHxHEIGHT (one side may be 0)"),
        ({"hires_size": "0x0"}, "Hires size '0x0' is not WIDTHxHEIGHT"),
        ({"hires_size": "48x48"}, "Hires size 48x48 is smaller than the first pass, 64x64."),
        ({"hires_size": "256x0"}, "Hires size 256x0 makes 256x256, 65,536 pixels"),
    ],
)
async def test_bad_hires_input_is_refused_in_one_sentence_and_not_charged(sim, options, expected):
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "dream", prompt="a cat", **options)
    assert result.ephemeral
    assert expected in result.response.content
    sim.expected_errors()
    assert await sim.bot.scheduler.jobs.with_status(*__import__("data").JobStatus) == []
    history = await alice.slash(sim.channel, "credits history")
    assert "charge" not in history.response.content


A1111_HIRES = (
    "a castle\nNegative prompt: fog\n"
    "Steps: 2, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 3, Size: 64x64, "
    "Model hash: 31e35c80fc, Model: tiny, Denoising strength: 0.5, Hires sampler: DPM++ 2M, "
    'Hires prompt: "a castle, towers", Hires CFG Scale: 5, Hires schedule type: Karras, '
    "Hires resize: 128x96, Hires steps: 2, Hires upscaler: Latent, RNG: CPU, Version: v1.10.1"
)


async def test_reproduce_runs_a1111s_target_size_prompt_and_sampler(sim):
    alice = sim.member("alice")
    png = encode_png(Image.new("RGB", (128, 96), "white"), A1111_HIRES)
    result = await alice.slash(sim.channel, "reproduce", image=("a1111.png", png))
    await wait_until(sim.env, lambda: has_result(result))
    queued = original_edits(sim.env, result)[0]["content"]
    assert "Not reproduced" not in queued
    made = await result.response.attachments[0].read()
    assert Image.open(io.BytesIO(made)).size == (128, 96)
    info = infotext(made)
    assert "Hires sampler: DPM++ 2M, Hires prompt: " in info
    assert "Hires CFG Scale: 5, Hires schedule type: Karras, Hires resize: 128x96" in info


def test_dream_stays_within_discords_25_options():
    from cogs.dream import Dream

    assert len(Dream.dream.parameters) <= 25  # Discord refuses the whole command past 25


def test_a_servers_words_and_step_limit_hold_for_the_hires_pass():
    from bot.community.guilds import GuildPolicy, WordRule, WordsAction
    from bot.community.policy import Limits, apply_words, check_limits, limits_for
    from bot.jobs.contracts import JobRefused

    policy = GuildPolicy(
        buttons_for_anyone=False,
        max_steps=20,
        words=(WordRule("gore"),),
        words_action=WordsAction.NEGATIVE,
    )
    hires = tiny_params(hires_scale=2, hires_prompt="a cat, gore")
    with pytest.raises(JobRefused, match=r"^This server does not allow gore\.$"):
        apply_words(hires, policy, 1500)  # never moved: the main prompt's negative is not its
    assert apply_words(replace(hires, hires_prompt="a cat, fur"), policy, 1500)[1] == ""
    limits: Limits = limits_for(policy, [], frozenset())
    with pytest.raises(JobRefused, match=r"^30 steps is over this server's limit of 20\.$"):
        check_limits(replace(hires, hires_steps=30), policy, limits)
    check_limits(replace(hires, hires_steps=20), policy, limits)
    small = limits_for(replace(policy, max_pixels=100 * 100), [], frozenset())
    resized = replace(hires, hires_scale=1.0, hires_resize=(128, 96))
    with pytest.raises(JobRefused, match=r"^Size 128x96 is 12,288 pixels; this server allows at"):
        check_limits(resized, policy, small)  # the final size, not the first pass's 64x64


async def test_reproduce_says_when_a1111s_hires_sampler_is_not_here(sim):
    alice = sim.member("alice")
    text = A1111_HIRES.replace("Hires sampler: DPM++ 2M", "Hires sampler: Restart")
    png = encode_png(Image.new("RGB", (128, 96), "white"), text)
    result = await alice.slash(sim.channel, "reproduce", image=("a1111.png", png))
    await wait_until(sim.env, lambda: has_result(result))
    queued = original_edits(sim.env, result)[0]["content"]
    assert "Hires sampler Restart is not available; used Euler a." in queued
    made = infotext(await result.response.attachments[0].read())
    assert "Hires sampler" not in made
    assert "Hires schedule type: Karras" in made


def test_sdxl_takes_a_target_size_and_the_variation_noise_too(tiny_sdxl):
    xl = load_model(ModelSpec("xl", str(tiny_sdxl)), torch.device("cpu"), torch.float32)
    euler = dict(steps=2, sampler="Euler", hires_resize=(96, 80), model="xl")
    [[blended]] = run(xl, tiny_params(seed=3, variation_seed=8, variation_strength=1, **euler))
    [[own]] = run(xl, tiny_params(seed=8, **euler))
    assert Image.open(io.BytesIO(own)).size == (96, 80)
    assert np.abs(pixels(blended) - pixels(own)).max() <= 1

"""/interpolate (issue 18): parameters, price, infotext, and the frames on the tiny models."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bot.generation.options import price_units
from engine.api.checks import check_params
from engine.api.infotext import params_from_infotext
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams, InvalidParams, Progress
from engine.api.specs import ModelSpec
from engine.imaging.images import read_png_infotext
from engine.pipelines.interpolate import generate_interpolations
from engine.pipelines.loading import LoadedModel, load_model
from engine.pipelines.txt2img import generate_batch
from tests.factories import tiny_params

MODELS = {
    "tiny": ModelSpec("tiny", "unused", max_pixels=128 * 128),
    "flux": ModelSpec("flux", "unused", family="flux"),
}


def interpolation(**overrides: object) -> GenerationParams:
    fields: dict[str, object] = {
        "mode": "interpolate",
        "prompt": "a cat",
        "prompt_to": "a dog",
        "seed": 1,
        "seed_to": 2,
        "frames": 4,
        **overrides,
    }
    return tiny_params(**fields)


@pytest.fixture(scope="module")
def loaded(tiny_sd1: Path) -> LoadedModel:
    return load_model(ModelSpec("tiny", str(tiny_sd1)), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def loaded_xl(tiny_sdxl: Path) -> LoadedModel:
    return load_model(ModelSpec("tiny-xl", str(tiny_sdxl)), torch.device("cpu"), torch.float32)


def frames(
    loaded: LoadedModel, params: GenerationParams, per_call: int = 4, seen: list | None = None
) -> list[bytes]:
    report = seen.append if seen is not None else lambda progress: None
    with torch.inference_mode():
        [result] = generate_interpolations(
            loaded, [EngineJob(1, params, report=report)], 60.0, per_call=per_call
        )
    return [image.png for image in result.images]


def dream(loaded: LoadedModel, params: GenerationParams) -> bytes:
    with torch.inference_mode():
        [result] = generate_batch(loaded, [EngineJob(1, params)], preview_interval=60.0)
    return result.images[0].png


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def ends_as_dreams(params: GenerationParams) -> tuple[GenerationParams, GenerationParams]:
    plain = replace(params, mode="txt2img", prompt_to=None, seed_to=None, frames=0)
    end = replace(plain, prompt=params.prompt_to or params.prompt, seed=params.seed_to or 0)
    return plain, end


# -- Parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"frames": 3}, "Frames must be 4-48, not 3."),
        ({"frames": 49}, "Frames must be 4-48, not 49."),
        ({"prompt_to": None, "seed_to": None}, "Nothing to interpolate"),
        ({"prompt_to": " a cat ", "seed_to": 1}, "Nothing to interpolate"),
        ({"fps": 0}, "Frames per second must be 1-30, not 0."),
        ({"animation": "avi"}, "Animation format 'avi' is not available"),
        ({"count": 2}, "An interpolation is one animation"),
        ({"variation_seed": 3, "variation_strength": 0.2}, "not available in an interpolation"),
        ({"prompt_to": "a [dog:cat:0.5]"}, "Prompt editing, alternation and AND in the second"),
        ({"prompt": "a cat AND a hat"}, "AND in the first prompt"),
        ({"negative": "[blur|noise]"}, "in the negative prompt are not available"),
        ({"prompt_to": "a dog <lora:style:0.8>"}, "LoRA tags go in the first prompt"),
        ({"prompt_to": "a (dog:99)"}, "second prompt"),
        ({"model": "flux"}, "Interpolation is not available for FLUX.1 dev models"),
        ({"mode": "txt2img"}, "are for /interpolate only"),
    ],
)
def test_bad_interpolations_are_named_in_one_sentence(overrides, message):
    with pytest.raises(InvalidParams, match=re.escape(message)):
        check_params(interpolation(**overrides), MODELS, 1500)


def test_one_differing_end_is_enough_and_old_rows_load_as_before():
    check_params(interpolation(prompt_to=None), MODELS, 1500)  # seeds only
    check_params(interpolation(seed_to=None), MODELS, 1500)  # prompts only
    old = tiny_params().to_dict()
    for name in ("prompt_to", "seed_to", "frames", "fps", "animation"):
        del old[name]
    assert GenerationParams.from_dict(old) == tiny_params()
    job = interpolation(frames=12)
    assert GenerationParams.from_dict(job.to_dict()) == job
    assert job.batch_key() != tiny_params().batch_key()


def test_the_price_counts_every_frame():
    one = price_units(tiny_params())
    assert price_units(interpolation(frames=16)) == pytest.approx(16 * one)
    assert interpolation(frames=16).images == 16
    assert tiny_params(count=3).images == 3


def test_the_infotext_reads_back_as_the_same_interpolation():
    from engine.api.infotext import build_infotext

    job = interpolation(prompt_to='a dog, "smiling": wide', frames=24, fps=12, animation="gif")
    text = build_infotext(job, seed=job.seed, model_hash=None)
    assert 'Frames: 24, Interpolate to: "a dog, \\"smiling\\": wide", Interpolate seed: 2' in text
    assert "Frame rate: 12, Animation: gif" in text
    assert "Denoising strength" not in text
    assert params_from_infotext(text) == job
    prompts_only = interpolation(seed_to=None)
    text = build_infotext(prompts_only, seed=1, model_hash=None)
    assert "Interpolate seed" not in text
    assert params_from_infotext(text) == prompts_only


def test_what_cannot_fit_the_upload_limit_even_at_half_the_side_is_refused():
    from engine.imaging.animation import fits_upload

    limit = 10 * 1024 * 1024
    assert fits_upload(48, 512, 512, "gif", limit)
    assert not fits_upload(48, 1024, 1024, "gif", limit)
    assert fits_upload(48, 1024, 1024, "webp", limit)
    assert fits_upload(48, 1536, 1536, "mp4", limit)


def test_an_animation_shrinks_until_it_fits():
    from engine.imaging.animation import encode_animation, frame_count

    rng = np.random.default_rng(0)
    pngs = []
    for _ in range(4):  # noise: the hardest pictures to compress
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(buffer, "PNG")
        pngs.append(buffer.getvalue())
    for fmt in ("webp", "gif"):
        whole = encode_animation(pngs, fmt, 8, 10 * 1024 * 1024)
        small = encode_animation(pngs, fmt, 8, len(whole.data) // 3)
        assert len(small.data) <= len(whole.data) // 3
        assert frame_count(small.data) == 4
        with Image.open(io.BytesIO(whole.data)) as full, Image.open(io.BytesIO(small.data)) as cut:
            assert full.size == (128, 128)
            assert cut.size[0] < 128 or fmt == "webp"


# -- The engine ---------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])
def test_the_ends_are_the_dream_images_and_the_middle_is_between(loaded, sampler):
    """Alone in its call, an end has the /dream image's very pixels (its PNG differs only
    by the interpolation's keys in its infotext)."""
    job = interpolation(sampler=sampler, frames=5, seed=3, seed_to=8)
    seen: list[Progress] = []
    made = frames(loaded, job, per_call=2, seen=seen)
    assert len(made) == 5
    start, end = ends_as_dreams(job)
    assert np.array_equal(pixels(made[-1]), pixels(dream(loaded, end)))  # alone in the last call
    assert np.abs(pixels(made[0]) - pixels(dream(loaded, start))).max() <= 1  # with frame 1
    [first, *_] = frames(loaded, job, per_call=1)
    assert np.array_equal(pixels(first), pixels(dream(loaded, start)))
    middle = pixels(made[2])
    assert np.abs(middle - pixels(made[0])).max() > 10
    assert np.abs(middle - pixels(made[-1])).max() > 10
    # Three calls of 2, 2 and 1 frames: one total of 3 x 3 steps.
    assert [(p.step, p.total) for p in seen] == [(step, 9) for step in range(10)]
    info = read_png_infotext(made[3])
    assert info is not None
    assert "Seed: 3," in info
    assert "Frames: 5, Interpolate to: a dog, Interpolate seed: 8" in info


def test_frames_in_a_batch_equal_the_frames_made_alone(loaded):
    job = interpolation(frames=4, sampler="Euler")
    alone = frames(loaded, job, per_call=1)
    batched = frames(loaded, job, per_call=4)
    for one, other in zip(alone, batched, strict=True):
        assert np.abs(pixels(one) - pixels(other)).max() <= 1


def test_same_seed_different_prompts_morph_from_one_dream_to_the_other(loaded):
    job = interpolation(seed_to=None, prompt="a red cube", prompt_to="a blue sphere, at night")
    made = frames(loaded, job, per_call=1)
    start, _ = ends_as_dreams(job)
    assert np.array_equal(pixels(made[0]), pixels(dream(loaded, start)))
    end = replace(start, prompt="a blue sphere, at night")
    assert np.array_equal(pixels(made[-1]), pixels(dream(loaded, end)))
    assert np.abs(pixels(made[1]) - pixels(made[0])).max() > 0


def test_sdxl_lerps_the_pooled_embeddings_too(loaded_xl):
    job = interpolation(model="tiny-xl", frames=4, negative="")
    made = frames(loaded_xl, job, per_call=3)
    start, end = ends_as_dreams(job)
    assert np.abs(pixels(made[0]) - pixels(dream(loaded_xl, start))).max() <= 1
    assert np.array_equal(pixels(made[-1]), pixels(dream(loaded_xl, end)))

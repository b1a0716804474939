"""The engine on its own: real tiny diffusers models loaded the way users' models are."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine.api.errors import EngineError, JobCancelled, ModelLoadError
from engine.api.infotext import params_from_infotext
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams, Progress
from engine.api.samplers import SAMPLERS
from engine.api.specs import ModelSpec
from engine.imaging.images import read_png_infotext
from engine.pipelines.loading import detect_single_file_family, load_model, pick_device, pick_dtype
from engine.pipelines.tiny import build_tiny_sd1, build_tiny_sdxl
from engine.pipelines.txt2img import generate_batch, set_sampler
from engine.worker import EngineConfig, EngineWorker
from tests.factories import tiny_params
from tests.ldm_layout import pipeline_to_ldm

CPU = torch.device("cpu")


def params(**overrides) -> GenerationParams:
    return tiny_params(**overrides)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def difference(a: bytes, b: bytes) -> int:
    """The largest difference of one pixel channel; batched matmuls round differently, so
    images that should be the same may differ by 1."""
    return int(np.abs(pixels(a) - pixels(b)).max())


@pytest.fixture
async def engine(tiny_sd1: Path, tiny_sdxl: Path):
    worker = EngineWorker(
        EngineConfig(
            {"tiny": ModelSpec("tiny", str(tiny_sd1)), "xl": ModelSpec("xl", str(tiny_sdxl))},
            device="cpu",
            preview_interval=0.0,
        )
    )
    worker.start()
    yield worker
    await worker.stop()


async def generate(engine: EngineWorker, p: GenerationParams, **job) -> list[bytes]:
    [result] = await engine.generate([EngineJob(1, p, **job)])
    return [image.png for image in result.images]


def test_device_and_dtype_choice():
    assert pick_device("cpu") == CPU
    assert pick_dtype("auto", CPU) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.float16
    assert pick_dtype("auto", torch.device("mps")) == torch.float16
    assert pick_dtype("bfloat16", torch.device("cuda")) == torch.bfloat16
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert pick_device("auto") == CPU


def test_loads_diffusers_folders_of_each_family(tiny_sd1, tiny_sdxl):
    sd1 = load_model(ModelSpec("a", str(tiny_sd1)), CPU, torch.float32)
    xl = load_model(ModelSpec("b", str(tiny_sdxl)), CPU, torch.float32)
    assert (sd1.family, xl.family) == ("sd1", "sdxl")
    assert sd1.model_hash is None
    assert not hasattr(sd1.pipe, "safety_checker") or sd1.pipe.safety_checker is None


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_checkpoint_loads_and_matches_the_folder(tmp_path, family, suffix):
    build = build_tiny_sdxl if family == "sdxl" else build_tiny_sd1
    pipe = build(tmp_path / "work")
    folder = tmp_path / "folder"
    pipe.save_pretrained(str(folder))
    checkpoint = tmp_path / f"model{suffix}"
    state = pipeline_to_ldm(pipe)
    if suffix == ".safetensors":
        save_file(state, str(checkpoint))
    else:
        torch.save({"state_dict": state}, checkpoint)
    spec_family = family if suffix == ".ckpt" else None  # a pickle is not opened to guess
    single = load_model(
        ModelSpec("single", str(checkpoint), family=spec_family, config=str(folder)),
        CPU,
        torch.float32,
    )
    from_folder = load_model(ModelSpec("folder", str(folder)), CPU, torch.float32)
    assert single.family == family
    assert len(single.model_hash) == 10
    assert not any(p.is_meta for p in single.pipe.unet.parameters())
    call = dict(prompt="a cat", width=64, height=64, num_inference_steps=2, output_type="np")
    a = single.pipe(generator=torch.Generator().manual_seed(3), **call).images
    b = from_folder.pipe(generator=torch.Generator().manual_seed(3), **call).images
    np.testing.assert_allclose(a, b, atol=1e-5)


SD2_KEY = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
XL_KEY = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"


def test_single_file_family_is_read_from_the_keys(tmp_path):
    files = []
    for name, key in (("sd1", "cond_stage_model.transformer.x"), ("sd2", SD2_KEY), ("xl", XL_KEY)):
        path = tmp_path / f"{name}.safetensors"
        save_file({key: torch.zeros(1)}, str(path))
        files.append(path)
    sd1, sd2, xl = files
    assert [detect_single_file_family(p) for p in (sd1, sd2, xl)] == ["sd1", "sd2", "sdxl"]


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("missing.safetensors", "file missing.safetensors was not found"),
        ("no/such/folder-or-hub-id", "the bot's log has the details"),
    ],
)
def test_missing_models_raise_a_readable_error_without_paths(tmp_path, source, shown):
    with pytest.raises(ModelLoadError) as caught:
        load_model(ModelSpec("gone", str(tmp_path / source)), CPU, torch.float32)
    assert caught.value.user_message == f"Model gone could not be loaded: {shown}"
    assert str(tmp_path) not in caught.value.user_message
    assert caught.value.detail.startswith("Model gone could not be loaded: ")


async def test_same_seed_same_pixels_and_infotext(engine):
    p = params(negative="ugly", cfg=5.5, sampler="DPM++ 2M Karras")
    first, second = await generate(engine, p), await generate(engine, p)
    assert first == second
    read = params_from_infotext(read_png_infotext(first[0]))
    assert read.model == "tiny-sd1"  # the checkpoint's name, A1111's: the model's folder
    assert replace(read, model=p.model) == p


async def test_batch_seeds_match_single_runs(engine):
    batch = await generate(engine, params(seed=10, count=3))
    for index, png in enumerate(batch):
        [alone] = await generate(engine, params(seed=10 + index))
        assert np.abs(pixels(png) - pixels(alone)).max() <= 1  # batched matmuls round differently
        assert params_from_infotext(read_png_infotext(png)).seed == 10 + index


async def test_jobs_of_different_members_share_a_batch(engine):
    a, b = params(prompt="a cat", seed=1, count=2), params(prompt="a dog", seed=7)
    results = await engine.generate([EngineJob(1, a), EngineJob(2, b)])
    assert [len(r.images) for r in results] == [2, 1]
    assert [i.seed for i in results[1].images] == [7]
    [alone] = await generate(engine, b)
    assert np.abs(pixels(results[1].images[0].png) - pixels(alone)).max() <= 1
    with pytest.raises(EngineError, match="Generation failed") as caught:
        await engine.generate([EngineJob(1, a), EngineJob(2, params(steps=4))])
    assert "cannot share a batch" in str(caught.value.__cause__)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
async def test_every_sampler_runs(engine, sampler):
    [png] = await generate(engine, params(sampler=sampler, steps=2))
    assert params_from_infotext(read_png_infotext(png)).sampler == sampler


async def test_sdxl_generates(engine):
    [png] = await generate(engine, params(model="xl", count=1))
    assert Image.open(io.BytesIO(png)).size == (64, 64)


async def test_progress_reaches_the_loop_with_previews(engine):
    seen: list[Progress] = []
    loop_thread = []

    def report(progress: Progress) -> None:
        seen.append(progress)
        loop_thread.append(asyncio.get_running_loop() is not None)

    await generate(engine, params(steps=4, count=2), report=report)
    assert [p.step for p in seen] == [0, 1, 2, 3, 4]
    assert all(loop_thread)
    previews = [p.preview_png for p in seen if p.preview_png]
    assert previews
    assert Image.open(io.BytesIO(previews[0])).size[0] <= 256


async def test_cancel_stops_within_a_step_and_the_engine_goes_on(engine):
    job = EngineJob(1, params(steps=50))
    job.report = lambda progress: progress.step >= 2 and job.cancel.set()
    with pytest.raises(JobCancelled):
        await engine.generate([job])
    assert len(await generate(engine, params(steps=1))) == 1


async def test_unknown_model_and_stopped_engine(engine):
    with pytest.raises(ModelLoadError, match="no model of that name"):
        await engine.generate([EngineJob(1, params(model="nope"))])
    await engine.stop()
    from engine.api.errors import EngineStopped

    with pytest.raises(EngineStopped):
        await engine.generate([EngineJob(1, params())])


# -- Prompts as members write them (issue 7) ---------------------------------------------


@pytest.mark.parametrize(
    ("family", "negative"), [("sd1", "ugly, blurry"), ("sd1", ""), ("sdxl", "ugly"), ("sdxl", "")]
)
def test_plain_prompts_give_diffusers_own_images(tiny_sd1, tiny_sdxl, family, negative):
    """Our embeddings and noise, passed to the pipeline, give what its own call gives."""
    folder = tiny_sdxl if family == "sdxl" else tiny_sd1
    loaded = load_model(ModelSpec("tiny", str(folder)), CPU, torch.float32)
    p = params(prompt="the cat, a dog", negative=negative, seed=5, count=2)
    with torch.inference_mode():
        [result] = generate_batch(loaded, [EngineJob(1, p)], preview_interval=60.0)
        set_sampler(loaded, p.sampler)
        # SDXL's empty negative prompt is zeros in A1111; diffusers zeros it when it is None.
        diffusers_negative = None if family == "sdxl" and not negative else [negative] * 2
        expected = loaded.pipe(
            prompt=[p.prompt] * 2,
            negative_prompt=diffusers_negative,
            width=64,
            height=64,
            num_inference_steps=p.steps,
            guidance_scale=p.cfg,
            generator=[torch.Generator().manual_seed(seed) for seed in p.seeds],
            output_type="pil",
        ).images
    for image, reference in zip(result.images, expected, strict=True):
        assert np.abs(pixels(image.png) - np.asarray(reference, dtype=np.int16)).max() <= 1


@pytest.mark.parametrize("model", ["tiny", "xl"])
async def test_variation_strength_0_and_1_give_each_seeds_own_image(engine, model):
    # A deterministic sampler: as in A1111, ancestral samplers keep drawing step noise from
    # the main seed, so only the starting noise takes the variation seed.
    base = dict(model=model, sampler="Euler")
    [own] = await generate(engine, params(seed=3, **base))
    [other] = await generate(engine, params(seed=8, **base))
    [zero] = await generate(engine, params(seed=3, variation_seed=8, **base))
    [one] = await generate(engine, params(seed=3, variation_seed=8, variation_strength=1, **base))
    [half] = await generate(
        engine, params(seed=3, variation_seed=8, variation_strength=0.5, **base)
    )
    assert difference(zero, own) <= 1
    assert difference(one, other) <= 1
    assert difference(half, own) > 1
    assert difference(half, other) > 1
    read = params_from_infotext(read_png_infotext(half))
    assert (read.seed, read.variation_seed, read.variation_strength) == (3, 8, 0.5)


async def test_a_variation_batch_keeps_the_seed_and_counts_the_variation_seed_up(engine):
    varied = params(seed=3, count=2, variation_seed=20, variation_strength=0.4, sampler="Euler")
    [result] = await engine.generate([EngineJob(1, varied)])
    assert [(i.seed, i.variation_seed) for i in result.images] == [(3, 20), (3, 21)]
    second = result.images[1]
    assert params_from_infotext(read_png_infotext(second.png)).variation_seed == 21
    alone_params = params(seed=3, variation_seed=21, variation_strength=0.4, sampler="Euler")
    [alone] = await generate(engine, alone_params)
    assert difference(second.png, alone) <= 1


async def test_long_and_short_prompts_share_a_batch_and_keep_their_images(engine):
    long = params(prompt=" ".join(["a"] * 80) + ", (cat:1.3)", seed=5, negative="ugly")
    short = params(prompt="a dog", seed=6)
    results = await engine.generate([EngineJob(1, long), EngineJob(2, short)])
    for result, p in zip(results, (long, short), strict=True):
        [alone] = await generate(engine, p)
        assert difference(result.images[0].png, alone) <= 1


@pytest.mark.parametrize(
    "changed",
    [
        {"prompt": "a (cat:1.5)"},
        {"prompt": "a (cat:0.2)"},
        {"clip_skip": 2},
        {"prompt": "a:0.3 cat:0.7", "prompt_syntax": "auto"},
        {"prompt": "a BREAK cat"},
    ],
)
async def test_prompt_language_and_clip_skip_change_the_image(engine, changed):
    [plain] = await generate(engine, params(prompt="a cat"))
    p = params(**{"prompt": "a cat", **changed})
    [png] = await generate(engine, p)
    assert difference(png, plain) > 1
    assert replace(params_from_infotext(read_png_infotext(png)), model=p.model) == p


async def test_cpu_noise_is_named_in_the_infotext_and_gpu_noise_on_a_cpu_is_the_same(tiny_sd1):
    spec = ModelSpec("tiny", str(tiny_sd1))
    outputs = {}
    for noise in ("cpu", "gpu"):
        worker = EngineWorker(EngineConfig({"tiny": spec}, device="cpu", noise=noise))
        worker.start()
        try:
            [result] = await worker.generate([EngineJob(1, params(seed=9))])
        finally:
            await worker.stop()
        outputs[noise] = result.images[0]
    assert ", RNG: CPU, " in outputs["cpu"].infotext  # before our Version, as A1111 writes
    assert "RNG" not in outputs["gpu"].infotext  # A1111's default needs no mention
    assert np.array_equal(pixels(outputs["cpu"].png), pixels(outputs["gpu"].png))

"""img2img, inpaint, outpaint, Vary (Region) and upscale on SD 3 and FLUX.1: tiny random
models saved and loaded as users' are, run through diffusers' own img2img and inpaint
pipelines derived from the loaded model, with each image's own seed, diffusers' step
count for the strength, progress, and the infotext Forge writes."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxImg2ImgPipeline, StableDiffusion3Img2ImgPipeline
from PIL import Image

from bot.generation.options import price_units
from engine.api.checks import check_params
from engine.api.errors import EngineError
from engine.api.families import FAMILIES, ModelFamily
from engine.api.infotext import params_from_infotext, parse_infotext
from engine.api.params import GenerationParams, InvalidParams, Progress
from engine.api.samplers import flow_img2img_steps
from engine.api.specs import ModelSpec
from engine.imaging.images import read_png_infotext
from engine.pipelines.conditioned import generate_conditioned
from engine.pipelines.loading import LoadedModel, load_model
from engine.pipelines.tiny_families import save_tiny_family
from engine.pipelines.tiny_segmenter import save_tiny_segmenter
from engine.pipelines.upscale import UpscaleConfig, tile_boxes
from tests.test_image_modes import far_from, job, picture, pixels, run, square_mask

CPU = torch.device("cpu")
CFG: dict[ModelFamily, float] = {"flux": 3.5, "flux-schnell": 0.0, "sd3": 4.0}
PIPELINES = {"flux": FluxImg2ImgPipeline, "sd3": StableDiffusion3Img2ImgPipeline}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flow-models")
    return {family: save_tiny_family(root / f"tiny-{family}", family) for family in CFG}


@pytest.fixture(scope="module")
def models(folders) -> dict[str, LoadedModel]:
    # At most 64x64 in one pass: a larger upscale goes through tiles.
    return {
        family: load_model(ModelSpec(family, str(folder), max_pixels=64 * 64), CPU, torch.float32)
        for family, folder in folders.items()
    }


def flow_params(family: ModelFamily, **overrides) -> GenerationParams:
    values = {
        "prompt": "a red cube on a table",
        "negative": "",
        "seed": 5,
        "steps": 4,
        "cfg": CFG[family],
        "width": 64,
        "height": 64,
        "sampler": "Euler",
        "count": 1,
        "model": family,
        "mode": "img2img",
        "init_image": "init",
        "denoise": 0.6,
    }
    return GenerationParams(**{**values, **overrides})


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_img2img_is_diffusers_own_pipeline_with_each_images_seed(models, folders, family):
    loaded = models[family]
    p = flow_params(family, count=2, negative="blurry" if family == "sd3" else "")
    seen: list[Progress] = []
    j = job(p, init=picture())
    j.report = seen.append
    first = run(loaded, j)
    derived = loaded.derived["img2img"]
    assert type(derived) is PIPELINES[family]
    assert derived.transformer is loaded.pipe.transformer  # from_pipe: no second copy
    assert derived.vae is loaded.pipe.vae
    [alone] = run(loaded, job(replace(p, count=1, seed=6), init=picture()))
    assert np.abs(pixels(first[1]) - pixels(alone)).max() <= 1
    assert np.abs(pixels(first[0]) - pixels(first[1])).max() > 10
    # diffusers' rule: 4 steps at strength 0.6 skip int(4 - 2.4) = 1, so 3 run.
    assert [(s.step, s.total) for s in seen] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    # A plain call of the same diffusers pipeline with the same seed makes the same image.
    plain = PIPELINES[family].from_pretrained(str(folders[family]))
    plain.set_progress_bar_config(disable=True)
    extra = {"negative_prompt": "blurry"} if family == "sd3" else {}
    expected = plain(
        prompt=p.prompt,
        image=picture(),
        width=64,
        height=64,
        strength=0.6,
        num_inference_steps=4,
        guidance_scale=p.cfg,
        generator=torch.Generator().manual_seed(6),
        max_sequence_length=FAMILIES[family].prompt_tokens,
        **extra,
    ).images[0]
    assert np.abs(pixels(alone) - np.asarray(expected, dtype=np.int16)).max() <= 1


def test_flux_img2img_infotext_is_forges(models):
    [out] = run(models["flux"], job(flow_params("flux"), init=picture()))
    infotext = read_png_infotext(out)
    values = parse_infotext(infotext).values
    assert (values["CFG scale"], values["Distilled CFG Scale"]) == ("1", "3.5")
    assert values["Denoising strength"] == "0.6"
    assert values["Model"] == "tiny-flux"
    read = params_from_infotext(infotext)
    assert (read.denoise, read.cfg, read.seed) == (0.6, 3.5, 5)


@pytest.mark.parametrize(
    ("steps", "denoise"), [(4, 0.6), (10, 0.3), (25, 0.56), (4, 1.0), (7, 0.05), (28, 0.75)]
)
def test_the_step_count_is_the_one_diffusers_runs(models, steps, denoise):
    seen: list[Progress] = []
    j = job(flow_params("flux-schnell", steps=steps, denoise=denoise), init=picture())
    j.report = seen.append
    run(models["flux-schnell"], j)
    ran = [s.step for s in seen if s.step]
    assert ran == list(range(1, flow_img2img_steps(steps, denoise) + 1))
    assert seen[0].total == seen[-1].total == len(ran)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_inpaint_repaints_only_the_masked_area_with_previews(models, family):
    p = flow_params(family, mode="inpaint", mask_image="mask", denoise=0.9, mask_blur=2)
    seen: list[Progress] = []
    j = job(p, init=picture(), mask=square_mask())
    j.report = seen.append
    with torch.inference_mode():  # previews at every step but the last
        [result] = generate_conditioned(models[family], [j], 0.0, "cpu")
    out = result.images[0].png
    previews = [s.preview_png for s in seen if s.preview_png is not None]
    assert len(previews) == flow_img2img_steps(4, 0.9) - 1
    assert Image.open(io.BytesIO(previews[0])).size[0] > 0
    before, after = np.asarray(picture(), dtype=np.int16), pixels(out)
    keep = far_from(square_mask(), 8)
    assert (after[keep] == before[keep]).all()
    assert np.abs(after[~keep] - before[~keep]).max() > 10
    assert type(models[family].derived["inpaint"]).__name__.endswith("InpaintPipeline")


def test_vary_region_by_grid_cell_repaints_that_cell_alone(models):
    p = flow_params("flux", mode="inpaint", mask_cell="top-left", denoise=1.0, mask_blur=0)
    [out] = run(models["flux"], job(p, init=picture()))
    before, after = np.asarray(picture(), dtype=np.int16), pixels(out)
    changed = np.abs(after - before).max(axis=-1) > 0
    assert changed[:21, :21].mean() > 0.5
    assert not changed[32:, 32:].any()
    assert parse_infotext(read_png_infotext(out)).values["Mask cell"] == "top-left"


def test_vary_region_from_words_on_sd3(models, tmp_path):
    """The words' mask (the tiny CLIPSeg) made in the job, as for SD; outside it, the picture."""
    segmenter = str(save_tiny_segmenter(tmp_path / "tiny-clipseg"))
    p = flow_params("sd3", mode="inpaint", mask_prompt="the sky", denoise=1.0, mask_blur=0)
    with torch.inference_mode():
        [result] = generate_conditioned(
            models["sd3"], [job(p, init=picture())], 60.0, "cpu", segmenter=segmenter
        )
    out = result.images[0].png
    before, after = np.asarray(picture(), dtype=np.int16), pixels(out)
    changed = np.abs(after - before).max(axis=-1) > 0
    assert 0.02 < changed.mean() < 0.98
    assert parse_infotext(read_png_infotext(out)).values["Mask prompt"] == "the sky"


def test_outpaint_grows_a_flux_canvas_and_keeps_the_original(models):
    p = flow_params("flux", mode="outpaint", outpaint=(16, 0, 0, 16), denoise=0.9)
    small = picture(48, 48)
    [out] = run(models["flux"], job(p, init=small))
    result = pixels(out)
    assert result.shape == (64, 64, 3)
    margin = 8 + 2 * p.mask_blur + 2
    inside = result[0 : 48 - margin, 16 + margin : 64]
    assert (inside == np.asarray(small, dtype=np.int16)[0 : 48 - margin, margin:48]).all()
    assert result[:, :8].std() > 1


def test_sd3_upscale_in_tiles_of_sixteen_pixel_multiples(models):
    p = flow_params("sd3", mode="upscale", width=128, height=96, denoise=0.5, steps=2, upscale=2)
    seen: list[Progress] = []
    j = job(p, init=picture(64, 48))
    j.report = seen.append
    [out] = run(models["sd3"], j, config=UpscaleConfig(tile=72, overlap=16))
    assert Image.open(io.BytesIO(out)).size == (128, 96)
    tiles = tile_boxes(128, 96, 64, 64, 16)  # 72 is cut to SD 3's multiple of 16
    assert seen[-1].step == seen[-1].total == len(tiles) * flow_img2img_steps(2, 0.5)


def test_a_picture_off_the_patch_grid_comes_back_at_its_size(models):
    p = flow_params("flux", width=72, height=56)
    [out] = run(models["flux"], job(p, init=picture(72, 56)))
    assert Image.open(io.BytesIO(out)).size == (72, 56)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"denoise": 1.5}, "Denoising strength must be 0-1, not 1.5."),
        ({"init_image": None}, "img2img needs an image to start from."),
        ({"mode": "inpaint", "negative": "blurry"}, "FLUX.1 dev has no negative prompt"),
        ({"width": 72}, "multiples of 16 for FLUX.1 dev models."),
        (
            {"mode": "txt2img", "init_image": None, "hires_scale": 2.0},
            "Hires fix is for SD 1.x/SDXL models here, without ControlNet.",
        ),
    ],
)
def test_bad_image_jobs_on_flux_are_refused_in_one_sentence(overrides, message):
    models = {"flux": ModelSpec("flux", "tiny-flux", family="flux")}
    with pytest.raises(InvalidParams) as refused:
        check_params(flow_params("flux", **overrides), models, 500)
    assert message in str(refused.value)


def test_an_image_job_on_flux_is_priced_by_the_steps_diffusers_runs():
    spec = ModelSpec("flux", "tiny-flux", family="flux")
    txt2img = price_units(flow_params("flux", mode="txt2img", steps=28), spec)
    img2img = price_units(flow_params("flux", steps=28, denoise=0.75), spec)
    assert img2img == pytest.approx(txt2img * 21 / 28)  # not A1111's 22 steps


def test_an_sd_inpainting_unet_on_a_flux_model_is_refused_in_words(folders):
    spec = ModelSpec("flux", str(folders["flux"]), inpaint_source="/models/sd-inpainting")
    loaded = load_model(spec, CPU, torch.float32)
    p = flow_params("flux", mode="inpaint", mask_image="mask", denoise=0.9)
    with pytest.raises(EngineError, match=r"FLUX\.1 dev models cannot use"):
        run(loaded, job(p, init=picture(), mask=square_mask()))

"""img2img, inpaint, outpaint, upscale and ControlNet on tiny real diffusers models."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.api.errors import JobCancelled
from engine.api.infotext import params_from_infotext, parse_infotext
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams, Progress
from engine.api.samplers import SAMPLERS, resolved_schedule
from engine.api.specs import ModelSpec
from engine.imaging.images import read_png_infotext
from engine.pipelines import image_pipes
from engine.pipelines.conditioned import generate_conditioned
from engine.pipelines.control import ControlNetUnavailable, canny_map, control_map
from engine.pipelines.image_pipes import steps_run
from engine.pipelines.loading import LoadedModel, load_model
from engine.pipelines.tiny import save_tiny_controlnet, save_tiny_inpainting, save_tiny_upscaler
from engine.pipelines.upscale import UpscaleConfig, tile_boxes
from tests.factories import tiny_params
from tests.test_samplers import reference_sigmas

CPU = torch.device("cpu")
INIT, MASK, CONTROL = "init", "mask", "control"


@pytest.fixture(scope="session")
def tiny_controlnet(tmp_path_factory: pytest.TempPathFactory, tiny_sd1: Path) -> Path:
    return save_tiny_controlnet(tmp_path_factory.mktemp("models") / "tiny-canny", tiny_sd1)


@pytest.fixture(scope="session")
def tiny_inpainting(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_inpainting(tmp_path_factory.mktemp("models") / "tiny-inpainting")


@pytest.fixture(scope="session")
def tiny_upscaler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_upscaler(tmp_path_factory.mktemp("models") / "tiny-x4")


@pytest.fixture(scope="module")
def sd1(tiny_sd1: Path, tiny_controlnet: Path) -> LoadedModel:
    spec = ModelSpec(
        "tiny", str(tiny_sd1), max_pixels=64 * 64, controlnets={"canny": str(tiny_controlnet)}
    )
    return load_model(spec, CPU, torch.float32)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def picture(width: int = 64, height: int = 64) -> Image.Image:
    """A smooth gradient with a square: edges for canny, structure to keep."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1)
    rgb[height // 4 : height // 2, width // 4 : width // 2] = (250, 250, 20)
    return Image.fromarray(rgb.astype(np.uint8))


def square_mask(width: int = 64, height: int = 64) -> Image.Image:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[8:24, 36:56] = 255
    return Image.fromarray(mask)


def job(params: GenerationParams, job_id: int = 1, **inputs: Image.Image) -> EngineJob:
    keys = {"init": params.init_image, "mask": params.mask_image, "control": params.control_image}
    data = {keys[name]: png(image) for name, image in inputs.items()}
    return EngineJob(job_id, params, inputs=data)


def run(loaded: LoadedModel, *jobs: EngineJob, config: UpscaleConfig | None = None) -> list[bytes]:
    with torch.inference_mode():
        [result, *_] = generate_conditioned(loaded, jobs, 60.0, "cpu", config)
    return [image.png for image in result.images]


def img2img_params(**overrides) -> GenerationParams:
    values = {"mode": "img2img", "init_image": INIT, "denoise": 0.6, "steps": 4}
    return tiny_params(**{**values, **overrides})


# -- img2img ----------------------------------------------------------------------------


def test_img2img_is_deterministic_and_batches_seeds(sd1):
    p = img2img_params(count=2, seed=5)
    first = run(sd1, job(p, init=picture()))
    assert first == run(sd1, job(p, init=picture()))
    [alone] = run(sd1, job(replace(p, count=1, seed=6), init=picture()))
    assert np.abs(pixels(first[1]) - pixels(alone)).max() <= 1
    info = parse_infotext(read_png_infotext(first[0])).values
    assert info["Denoising strength"] == "0.6"
    assert info["Seed"] == "5"
    assert "img2img" not in sd1.pipe.__class__.__name__.lower()  # the base pipe is untouched
    assert type(sd1.derived["img2img"]).__name__ == "StableDiffusionImg2ImgPipeline"
    assert sd1.derived["img2img"].unet is sd1.pipe.unet  # from_pipe: no second copy


def test_img2img_denoise_zero_returns_the_image(sd1):
    [out] = run(sd1, job(img2img_params(denoise=0.0), init=picture()))
    assert (pixels(out) == np.asarray(picture(), dtype=np.int16)).all()


def test_img2img_runs_a1111s_steps_and_cancels(sd1):
    # A1111: t_enc = int(min(denoise, 0.999) * steps), then t_enc + 1 steps.
    seen: list[Progress] = []
    j = job(img2img_params(steps=10, denoise=0.5), init=picture())
    j.report = seen.append
    run(sd1, j)
    assert [p.step for p in seen] == [0, 1, 2, 3, 4, 5, 6]
    assert {p.total for p in seen} == {6}
    cancelled = job(img2img_params(steps=20, denoise=1.0), init=picture())

    def cancel_at_two(progress: Progress) -> None:
        if progress.step >= 2:
            cancelled.cancel.set()

    cancelled.report = cancel_at_two
    with pytest.raises(JobCancelled):
        run(sd1, cancelled)


# The sigmas A1111 samples img2img with: the schedule of all `steps` (k-diffusion's formulas,
# tests/test_samplers.py), of which sample_img2img takes sigmas[steps - t_enc - 1:].
@pytest.fixture
def schedulers(monkeypatch) -> list[dict[str, list[float]]]:
    """What each pipeline call's scheduler noised the image to and stepped through."""
    calls: list[dict[str, list[float]]] = []
    real = image_pipes.make_scheduler

    def make(loaded: LoadedModel, sampler: str, schedule: str = "Automatic") -> Any:
        scheduler = real(loaded, sampler, schedule)
        call: dict[str, list[float]] = {"noised": [], "steps": []}
        calls.append(call)
        add_noise, step = scheduler.add_noise, scheduler.step

        def noising(original: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> Any:
            call["noised"].append(float(scheduler.sigmas[scheduler.begin_index]))
            return add_noise(original, noise, timesteps)

        def stepping(output: torch.Tensor, timestep: Any, sample: torch.Tensor, *a: Any, **k: Any):
            index = scheduler.step_index
            index = scheduler.begin_index if index is None else index
            call["steps"].append(float(scheduler.sigmas[index]))
            return step(output, timestep, sample, *a, **k)

        scheduler.add_noise, scheduler.step = noising, stepping
        return scheduler

    monkeypatch.setattr(image_pipes, "make_scheduler", make)
    return calls


def a1111_img2img_sigmas(sampler: str, schedule: str, steps: int, denoise: float) -> np.ndarray:
    """sigma_sched of A1111's KDiffusionSampler.sample_img2img, from k-diffusion's formulas."""
    resolved = resolved_schedule(sampler, schedule)
    discard = SAMPLERS[sampler].discard_penultimate
    sigmas = reference_sigmas(steps, "Uniform" if resolved == "Automatic" else resolved, discard)
    t_enc = int(min(denoise, 0.999) * steps)
    return sigmas[steps - t_enc - 1 :]


MODES: dict[str, Callable[..., tuple[GenerationParams, dict[str, Image.Image]]]] = {
    "img2img": lambda **values: (img2img_params(**values), {"init": picture()}),
    "inpaint": lambda **values: (
        inpaint_params(**values),
        {"init": picture(), "mask": square_mask()},
    ),
    "outpaint": lambda **values: (
        inpaint_params(mode="outpaint", mask_image=None, outpaint=(16, 0, 0, 8), **values),
        {"init": picture(48, 56)},
    ),
    "upscale": lambda **values: (
        upscale_params(width=64, height=64, **values),
        {"init": picture(32, 32)},
    ),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize(
    ("sampler", "steps", "denoise"),
    [("Euler", 10, 0.5), ("DPM++ 2M", 7, 0.75), ("DPM2", 6, 0.3), ("Euler a", 5, 1.0)],
)
def test_each_mode_starts_from_a1111s_sigma(sd1, schedulers, mode, sampler, steps, denoise):
    if mode in ("inpaint", "outpaint") and denoise == 1.0:
        pytest.skip("at strength 1 diffusers' inpaint pipelines start from noise alone")
    params, inputs = MODES[mode](sampler=sampler, steps=steps, denoise=denoise)
    run(sd1, job(params, 1, **inputs), config=UpscaleConfig(tile=64))
    want = a1111_img2img_sigmas(sampler, params.schedule, steps, denoise)
    [call] = schedulers
    steps_taken = np.asarray(call["steps"])
    if sampler == "DPM2":  # two model calls a step, each step's sigma twice
        steps_taken = steps_taken[::2]
    assert call["noised"][0] == pytest.approx(want[0], rel=1e-4)
    np.testing.assert_allclose(steps_taken, want[:-1], rtol=1e-4)
    assert steps_run(params) == len(want) - 1


@pytest.mark.parametrize(
    ("sampler", "steps", "denoise", "expected"),
    [("Euler", 20, 0.75, 16), ("Euler", 20, 0.01, 1), ("Euler", 20, 1.0, 20),
     ("DDIM", 20, 0.75, 14), ("DDIM", 20, 0.05, 1), ("PLMS", 2, 0.5, 1),
     ("UniPC", 20, 0.75, 15), ("Euler", 20, 0.0, 0)],
)  # fmt: skip
def test_steps_run_is_a1111s_count(sampler, steps, denoise, expected):
    assert steps_run(img2img_params(sampler=sampler, steps=steps, denoise=denoise)) == expected


def test_sdxl_img2img(tiny_sdxl):
    xl = load_model(ModelSpec("xl", str(tiny_sdxl)), CPU, torch.float32)
    p = img2img_params(model="xl", steps=3)
    first = run(xl, job(p, init=picture()))
    assert first == run(xl, job(p, init=picture()))
    assert Image.open(io.BytesIO(first[0])).size == (64, 64)


# -- inpaint and outpaint ---------------------------------------------------------------


def inpaint_params(**overrides) -> GenerationParams:
    values = {"mode": "inpaint", "init_image": INIT, "mask_image": MASK, "denoise": 0.9}
    return tiny_params(**{**values, **overrides})


def far_from(mask: Image.Image, distance: int) -> np.ndarray:
    """Pixels further than `distance` from the mask: the blur cannot reach them."""
    grown = np.asarray(
        mask.filter(__import__("PIL.ImageFilter").ImageFilter.MaxFilter(2 * distance + 1))
    )
    return grown == 0


@pytest.mark.parametrize("full_res", [False, True])
def test_inpaint_changes_only_the_masked_area(sd1, full_res):
    p = inpaint_params(inpaint_full_res=full_res, inpaint_padding=8, mask_blur=2)
    [out] = run(sd1, job(p, init=picture(), mask=square_mask()))
    before, after = np.asarray(picture(), dtype=np.int16), pixels(out)
    keep = far_from(square_mask(), 8)
    assert (after[keep] == before[keep]).all()
    assert np.abs(after[~keep] - before[~keep]).max() > 10  # the masked area was repainted
    info = parse_infotext(read_png_infotext(out)).values
    assert info["Mask blur"] == "2"
    assert ("Inpaint area" in info) is full_res
    assert params_from_infotext(read_png_infotext(out)).inpaint_full_res is full_res


def test_inpaint_reads_the_mask_from_transparency_and_uses_an_inpainting_unet(
    tiny_sd1, tiny_inpainting
):
    spec = ModelSpec("tiny", str(tiny_sd1), inpaint_source=str(tiny_inpainting))
    loaded = load_model(spec, CPU, torch.float32)
    rgba = picture().convert("RGBA")
    alpha = np.full((64, 64), 255, dtype=np.uint8)
    alpha[8:24, 36:56] = 0
    rgba.putalpha(Image.fromarray(alpha))
    p = inpaint_params(mask_image=None, mask_blur=0)
    [out] = run(loaded, job(p, init=rgba))
    pipe = loaded.derived["inpaint"]
    assert pipe.unet.config.in_channels == 9
    assert pipe.vae is loaded.pipe.vae
    keep = alpha == 255
    assert (pixels(out)[keep] == np.asarray(picture(), dtype=np.int16)[keep]).all()


def test_outpaint_grows_the_canvas_and_keeps_the_original(sd1):
    p = inpaint_params(
        mode="outpaint", mask_image=None, outpaint=(16, 0, 0, 8), width=64, height=64
    )
    small = picture(48, 56)
    [out] = run(sd1, job(p, init=small))
    result = pixels(out)
    assert result.shape == (64, 64, 3)
    # The original sits at (16, 0); beyond the overlap and blur it is untouched.
    margin = 8 + 2 * p.mask_blur + 2
    inside = result[0 : 56 - margin, 16 + margin : 64]
    original = np.asarray(small, dtype=np.int16)[0 : 56 - margin, margin:48]
    assert (inside == original).all()
    assert result[:, :8].std() > 1  # the new strip holds something, not a flat fill
    assert parse_infotext(read_png_infotext(out)).values["Denoising strength"] == "0.9"


# -- upscale ----------------------------------------------------------------------------


def upscale_params(**overrides) -> GenerationParams:
    values = {"mode": "upscale", "init_image": INIT, "denoise": 0.5, "steps": 2, "upscale": 2.0}
    return tiny_params(**{**values, **overrides})


def test_upscale_past_the_cap_goes_through_tiles_at_the_exact_size(sd1):
    p = upscale_params(width=128, height=96)
    seen: list[Progress] = []
    j = job(p, init=picture(64, 48))
    j.report = seen.append
    config = UpscaleConfig(tile=64, overlap=16)
    [out] = run(sd1, j, config=config)
    assert Image.open(io.BytesIO(out)).size == (128, 96)
    tiles = tile_boxes(128, 96, 64, 64, 16)
    assert len(tiles) == 6
    # A1111's t_enc + 1 steps per tile: int(0.5 * 2) + 1.
    assert seen[-1].step == seen[-1].total == len(tiles) * 2
    info = parse_infotext(read_png_infotext(out)).values
    assert (info["SD upscale overlap"], info["SD upscale upscaler"]) == ("16", "Lanczos")


def test_upscale_within_the_cap_is_one_pass(sd1):
    p = upscale_params(width=64, height=64)
    seen: list[Progress] = []
    j = job(p, init=picture(32, 32))
    j.report = seen.append
    [out] = run(sd1, j, config=UpscaleConfig(tile=32, overlap=8))
    assert Image.open(io.BytesIO(out)).size == (64, 64)
    assert seen[-1].step == seen[-1].total == 2


def test_upscale_with_an_upscaler_model(sd1, tiny_upscaler):
    p = upscale_params(width=64, height=64, denoise=0.0)
    config = UpscaleConfig(upscaler=str(tiny_upscaler), upscaler_tile=16)
    [out] = run(sd1, job(p, init=picture(16, 16)), config=config)
    assert Image.open(io.BytesIO(out)).size == (64, 64)
    info = parse_infotext(read_png_infotext(out)).values
    assert info["SD upscale upscaler"] == "tiny-x4"
    assert type(sd1.derived["upscaler"][1]).__name__ == "StableDiffusionUpscalePipeline"


def test_tiles_cover_the_image_and_blend_without_seams():
    from engine.pipelines.upscale import process_tiles

    image = picture(200, 120)
    boxes = tile_boxes(200, 120, 64, 64, 16)
    covered = np.zeros((120, 200), dtype=bool)
    for left, top, right, bottom in boxes:
        covered[top:bottom, left:right] = True
    assert covered.all()
    same = process_tiles(image, (64, 64), 16, lambda index, part: part)
    assert np.abs(np.asarray(same, dtype=np.int16) - np.asarray(image, dtype=np.int16)).max() <= 1


# -- ControlNet -------------------------------------------------------------------------


def test_canny_map_is_computed_from_any_picture():
    edges = np.asarray(canny_map(picture()))
    assert set(np.unique(edges)) <= {0, 255}
    assert edges[16, 16:32].max() == 255  # the square's top edge
    assert edges[40:60, 40:60].max() == 0  # no edges in the smooth gradient
    ready = control_map(picture(32, 48), "depth", (64, 64))
    assert ready.size == (64, 64)


def test_controlnet_txt2img_and_img2img(sd1):
    p = tiny_params(control_type="canny", control_image=CONTROL, control_scale=0.8, steps=2)
    first = run(sd1, job(p, control=picture()))
    assert first == run(sd1, job(p, control=picture()))
    info = parse_infotext(read_png_infotext(first[0])).values
    assert info["ControlNet 0"].startswith("Module: canny, Model: tiny-canny, Weight: 0.8,")
    assert "Threshold A: 100, Threshold B: 200" in info["ControlNet 0"]
    guided = img2img_params(control_type="canny", control_image=CONTROL, steps=2)
    [out] = run(sd1, job(guided, init=picture(), control=picture()))
    assert (
        type(sd1.derived["controlnet-img2img"]).__name__
        == "StableDiffusionControlNetImg2ImgPipeline"
    )
    assert sd1.derived["controlnet-img2img"].unet is sd1.pipe.unet
    assert "Denoising strength: 0.6" in read_png_infotext(out)


def test_missing_controlnet_type_is_a_readable_error(sd1):
    p = tiny_params(control_type="depth", control_image=CONTROL, steps=2)
    with pytest.raises(ControlNetUnavailable, match=r"no ControlNet for depth.*canny"):
        run(sd1, job(p, control=picture()))


# -- through the engine thread and infotext ---------------------------------------------


async def test_the_worker_sends_image_jobs_here(tiny_sd1):
    from engine.worker import EngineConfig, EngineWorker

    worker = EngineWorker(
        EngineConfig(
            {"tiny": ModelSpec("tiny", str(tiny_sd1), max_pixels=64 * 64)},
            device="cpu",
            preview_interval=0.0,
            upscale_tile=64,
            upscale_tile_overlap=16,
        )
    )
    worker.start()
    try:
        p = upscale_params(width=128, height=64)
        [result] = await worker.generate([job(p, init=picture(64, 32))])
    finally:
        await worker.stop()
    assert (result.images[0].width, result.images[0].height) == (128, 64)
    assert "SD upscale overlap: 16" in result.images[0].infotext


def test_infotext_writes_a1111_keys_in_its_order_and_reads_them_back():
    from engine.api.infotext import build_infotext

    p = inpaint_params(mask_blur=4, inpaint_full_res=True, inpaint_padding=48, denoise=0.45)
    text = build_infotext(p, seed=1, model_hash=None, rng="CPU", extra={"ControlNet 0": "x"})
    last = text.splitlines()[-1]
    assert (
        "Denoising strength: 0.45, RNG: CPU, Mask blur: 4, Inpaint area: Only masked, "
        "Masked area padding: 48, ControlNet 0: x, Version: sdbot-"
    ) in last  # our Version last, as A1111 writes its own
    back = params_from_infotext(text)
    assert (back.mode, back.denoise, back.mask_blur) == ("txt2img", 0.45, 4)
    assert (back.inpaint_full_res, back.inpaint_padding) == (True, 48)
    plain = build_infotext(tiny_params(), seed=1, model_hash=None)
    assert "Denoising" not in plain


def test_controlnet_txt2img_keeps_variation_seeds(sd1):
    p = tiny_params(
        control_type="canny",
        control_image=CONTROL,
        steps=2,
        count=2,
        variation_seed=9,
        variation_strength=0.5,
    )
    first, second = run(sd1, job(p, control=picture()))
    assert first != second  # same seed, different variation seeds
    assert [
        params_from_infotext(read_png_infotext(png)).variation_seed for png in (first, second)
    ] == [9, 10]

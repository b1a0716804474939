"""/edit's engine (issue 18): InstructPix2Pix on a tiny random model saved and loaded through
the real loading code, its checks, price and infotext."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionInstructPix2PixPipeline
from PIL import Image

from bot.generation.options import price_units
from engine.api.checks import check_params
from engine.api.edits import NOT_SET_UP, edit_model
from engine.api.errors import EngineError, ModelLoadError
from engine.api.infotext import build_infotext, params_from_infotext, parse_infotext
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams, InvalidParams, Progress
from engine.api.specs import ModelSpec
from engine.imaging.images import read_png_infotext
from engine.pipelines.conditioned import generate_conditioned
from engine.pipelines.edit import pix2pix_guidance
from engine.pipelines.loading import LoadedModel, load_model
from tests.factories import tiny_params

CPU = torch.device("cpu")
INIT = "init"


@pytest.fixture(scope="module")
def sd1(tiny_sd1: Path, tiny_pix2pix: Path) -> LoadedModel:
    spec = ModelSpec("tiny", str(tiny_sd1), max_pixels=128 * 128, edit_source=str(tiny_pix2pix))
    return load_model(spec, CPU, torch.float32)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def picture(colour: tuple[int, int, int] = (200, 40, 40)) -> Image.Image:
    rgb = np.zeros((64, 64, 3), dtype=np.uint8)
    rgb[:] = colour
    rgb[16:40, 8:30] = (20, 220, 60)
    return Image.fromarray(rgb)


def edit_params(**overrides) -> GenerationParams:
    values = {"mode": "edit", "init_image": INIT, "denoise": 1.0, "steps": 3}
    return tiny_params(**{"prompt": "make it winter", **values, **overrides})


def job(params: GenerationParams, image: Image.Image | None = None, job_id: int = 1) -> EngineJob:
    return EngineJob(job_id, params, inputs={INIT: png(image or picture())})


def run(loaded: LoadedModel, *jobs: EngineJob) -> list[list[bytes]]:
    with torch.inference_mode():
        results = generate_conditioned(loaded, jobs, 0.0, "cpu")
    return [[image.png for image in result.images] for result in results]


def test_the_tiny_model_edits_through_the_loaded_models_own_modules(sd1):
    [[out]] = run(sd1, job(edit_params(seed=3)))
    assert Image.open(io.BytesIO(out)).size == (64, 64)
    assert not np.array_equal(pixels(out), np.asarray(picture(), dtype=np.int16))
    pipe = sd1.derived["edit"]
    assert isinstance(pipe, StableDiffusionInstructPix2PixPipeline)
    assert pipe.unet.config.in_channels == 8
    # Only the UNet is its own: text encoder and VAE are the model's, no second copy.
    assert pipe.unet is not sd1.pipe.unet
    assert pipe.text_encoder is sd1.pipe.text_encoder
    assert pipe.vae is sd1.pipe.vae


def test_same_seed_same_picture_and_the_picture_steers_it(sd1):
    params = edit_params(seed=11)
    [[first]] = run(sd1, job(params))
    [[again]] = run(sd1, job(params))
    assert first == again
    [[other_seed]] = run(sd1, job(replace(params, seed=12)))
    [[other_picture]] = run(sd1, job(params, picture((30, 30, 200))))
    [[holding_less]] = run(sd1, job(replace(params, image_cfg=0.5)))
    for different in (other_seed, other_picture, holding_less):
        assert not np.array_equal(pixels(first), pixels(different))


def test_a_batch_equals_each_job_alone(sd1):
    params = edit_params(seed=5, count=2)
    [[five, six]] = run(sd1, job(params))
    [[alone]] = run(sd1, job(replace(params, seed=6, count=1)))
    assert np.abs(pixels(six) - pixels(alone)).max() <= 1
    # Two members' jobs on the same picture share a batch, each its own images.
    mate = replace(params, seed=6, count=1, prompt="turn the cat into a tiger")
    assert mate.batch_key() == replace(params, seed=6, count=1).batch_key()
    together = run(sd1, job(params), job(mate, job_id=2))
    assert together[0] == [five, six]
    [[mate_alone]] = run(sd1, job(mate, job_id=2))
    assert np.abs(pixels(together[1][0]) - pixels(mate_alone)).max() <= 1
    # Another picture is another batch.
    moved = replace(params, init_image="another")
    assert moved.batch_key() != params.batch_key()


def test_progress_counts_every_step_with_previews(sd1):
    seen: list[Progress] = []
    edited = job(edit_params(steps=4))
    edited.report = seen.append
    run(sd1, edited)
    assert [p.step for p in seen] == [0, 1, 2, 3, 4]
    assert {p.total for p in seen} == {4}
    assert any(p.preview_png for p in seen)


def test_a1111s_guidance_below_diffusers_range(sd1):
    """At CFG 1 and image CFG 1 A1111's three rows combine to the first row alone, which is
    what diffusers runs unguided: the fold over the three rows must give the same."""
    run(sd1, job(edit_params(cfg=1.0, image_cfg=1.0)))  # the job path takes the fold too
    pipe = sd1.derived["edit"]
    # A sampler without step noise: the calls differ by their guidance alone (each job
    # call gives the pipeline its own scheduler again).
    pipe.scheduler = EulerDiscreteScheduler.from_config(sd1.base_scheduler_config)
    latents = torch.randn((1, 4, 32, 32), generator=torch.Generator().manual_seed(2))

    def call(**scales: float) -> np.ndarray:
        with torch.inference_mode():
            output = pipe(
                prompt="make it winter",
                image=picture(),
                num_inference_steps=3,
                latents=latents.clone(),
                output_type="np",
                **scales,
            )
        return np.asarray(output.images[0])

    unguided = call(guidance_scale=1.0, image_guidance_scale=1.0)
    with pix2pix_guidance(pipe, 1.0, 1.0) as scales:
        assert scales["guidance_scale"] > 1  # guided, three rows a step, then folded
        folded = call(**scales)
    assert pipe.unet._forward_hooks == {}  # the hook lives for one call only
    np.testing.assert_allclose(folded, unguided, atol=1e-5)
    assert not np.allclose(call(**scales), unguided, atol=1e-3)  # unfolded: another image


def test_infotext_is_a1111s_for_an_instruct_pix2pix_job_and_reads_back(sd1):
    [[out]] = run(sd1, job(edit_params(seed=7, image_cfg=1.25, cfg=6.5)))
    text = read_png_infotext(out)
    values = parse_infotext(text).values
    assert text.splitlines()[0] == "make it winter"
    assert values["CFG scale"] == "6.5"
    assert values["Image CFG scale"] == "1.25"
    assert values["Denoising strength"] == "1"
    last = text.splitlines()[-1]
    assert last.index("CFG scale: 6.5") < last.index("Image CFG scale") < last.index("Seed")
    back = params_from_infotext(text)
    assert (back.image_cfg, back.cfg, back.seed, back.steps) == (1.25, 6.5, 7, 3)
    # The picture is not in infotext: a paste runs the instruction from the prompt alone.
    assert back.mode == "txt2img"
    # Another mode never claims one, whatever its parameters hold.
    other = build_infotext(replace(back, image_cfg=2.0), seed=7, model_hash=None)
    assert "Image CFG scale" not in parse_infotext(other).values


def test_a_variation_seed_blends_into_an_edits_noise(sd1):
    params = edit_params(seed=4)
    [[plain]] = run(sd1, job(params))
    varied = replace(params, variation_seed=9, variation_strength=0.5)
    [[blended]] = run(sd1, job(varied))
    assert not np.array_equal(pixels(plain), pixels(blended))
    values = parse_infotext(read_png_infotext(blended)).values
    assert values["Variation seed"] == "9"


def test_an_edit_source_that_is_no_instruct_model_is_told(tiny_sd1):
    spec = ModelSpec("tiny", str(tiny_sd1), max_pixels=128 * 128, edit_source=str(tiny_sd1))
    loaded = load_model(spec, CPU, torch.float32)
    with pytest.raises(ModelLoadError, match=r"not an InstructPix2Pix model .*4 input channels"):
        run(loaded, job(edit_params()))
    bare = load_model(ModelSpec("bare", str(tiny_sd1)), CPU, torch.float32)
    with pytest.raises(EngineError, match="cannot edit pictures"):
        run(bare, job(edit_params(model="bare")))


# -- checks and price -------------------------------------------------------------------


@pytest.fixture
def models(tiny_sd1: Path, tiny_pix2pix: Path) -> dict[str, ModelSpec]:
    return {
        "plain": ModelSpec("plain", str(tiny_sd1), max_pixels=128 * 128),
        "tiny": ModelSpec("tiny", str(tiny_sd1), max_pixels=128 * 128, edit_source="ip2p"),
        "xl": ModelSpec("xl", "x/sdxl-base", family="sdxl", edit_source="ip2p-xl"),
    }


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"image_cfg": 3.5}, "Image CFG scale must be 0-3, not 3.5."),
        ({"image_cfg": -0.1}, "Image CFG scale must be 0-3, not -0.1."),
        ({"model": "plain"}, "Model plain cannot edit pictures from instructions here."),
        ({"model": "xl", "width": 1024, "height": 1024}, "/edit is not available for SDXL"),
        ({"denoise": 0.75}, "its denoising strength is 1, not 0.75"),
        ({"loras": (("rex", "rex.safetensors", 0.8),)}, "LoRAs do not apply to /edit"),
        ({"prompt": "[a cat:a tiger:0.5]"}, "Prompt editing [from:to:when]"),
        ({"prompt": "a cat AND a hat"}, "AND in the instruction"),
        ({"negative": "[blur|noise]"}, "alternation [a|b] and AND in the negative prompt"),
        ({"init_image": None}, "edit needs an image to start from."),
    ],
)
def test_what_an_edit_cannot_run_is_one_sentence(models, overrides, problem):
    with pytest.raises(InvalidParams) as refused:
        check_params(edit_params(**overrides), models, 1500)
    assert problem in str(refused.value)


def test_an_image_cfg_out_of_range_is_refused_in_any_mode(models):
    with pytest.raises(InvalidParams, match="Image CFG scale must be 0-3"):
        check_params(tiny_params(image_cfg=9.0), models, 1500)
    check_params(edit_params(image_cfg=0.0, cfg=0.0), models, 1500)  # A1111's whole range


def test_the_edit_model_is_the_preferred_one_that_can_edit(models):
    assert edit_model(models, "plain", "tiny") == "tiny"
    assert edit_model(models, "xl") == "xl"
    assert edit_model(models, None, "plain") == "tiny"  # the first configured one that can
    assert edit_model({"plain": models["plain"]}, "plain") is None
    assert NOT_SET_UP == "/edit is not set up on this bot."


def test_an_edit_is_priced_as_the_steps_it_runs():
    # Every step runs (from noise), as img2img at full strength: 20 steps of 512x512 is one.
    standard = edit_params(steps=20, width=512, height=512, sampler="DDIM")
    # Three UNet rows a step against CFG's two: half as dear again as a /dream step.
    assert price_units(standard) == pytest.approx(1.5)
    assert price_units(replace(standard, steps=40, count=2)) == pytest.approx(6.0)


def test_the_doctor_checks_an_edit_source(tiny_sd1, tiny_pix2pix, tmp_path):
    from bot.cli.checks.models import model_findings

    found = model_findings(ModelSpec("tiny", str(tiny_sd1), edit_source=str(tiny_pix2pix)))
    assert f"✓ SDBOT_MODELS (tiny.edit_source): folder {tiny_pix2pix}" in [
        finding.line() for finding in found
    ]
    gone = tmp_path / "ip2p"
    [*_, last] = model_findings(ModelSpec("tiny", str(tiny_sd1), edit_source=str(gone)))
    assert last.line() == (
        f"✗ SDBOT_MODELS (tiny.edit_source): there is no file or folder {gone}: fix its "
        '"edit_source" (a Hub id, a diffusers folder or a .safetensors/.ckpt file)'
    )

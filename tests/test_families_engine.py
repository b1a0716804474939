"""SD 3 and FLUX.1 in the engine: tiny random models saved to disk and loaded the way users'
models are (a diffusers folder, a single checkpoint file, a GGUF transformer), generating
through the engine thread with each image's own seed, progress, previews and cancel."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, FluxPipeline, StableDiffusion3Pipeline
from PIL import Image
from safetensors.torch import save_file

from engine.api.errors import EngineError, JobCancelled, ModelLoadError
from engine.api.families import FAMILIES, ModelFamily
from engine.api.infotext import params_from_infotext
from engine.api.jobs import EngineJob
from engine.api.memory import plan_for
from engine.api.params import GenerationParams, Progress
from engine.api.specs import ModelSpec
from engine.imaging.images import read_png_infotext
from engine.pipelines.flow_prompts import FlowPromptEncoder
from engine.pipelines.loading import load_model
from engine.pipelines.memory import place
from engine.pipelines.preview import latents_to_rgb
from engine.pipelines.tiny_families import build_tiny_flux, build_tiny_sd3, save_tiny_family
from engine.worker import EngineConfig, EngineWorker
from tests.flow_layout import sd3_single_file, write_gguf

CPU = torch.device("cpu")
CFG: dict[ModelFamily, float] = {"flux": 3.5, "flux-schnell": 0.0, "sd3": 4.0}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flow-models")
    return {family: save_tiny_family(root / f"tiny-{family}", family) for family in CFG}


@pytest.fixture
async def engine(folders):
    specs = {family: ModelSpec(family, str(folder)) for family, folder in folders.items()}
    worker = EngineWorker(EngineConfig(specs, device="cpu", preview_interval=0.0))
    worker.start()
    yield worker
    await worker.stop()


def job(family: ModelFamily, **overrides) -> GenerationParams:
    values = {
        "prompt": "a red cube on a table",
        "negative": "",
        "seed": 3,
        "steps": 3,
        "cfg": CFG[family],
        "width": 64,
        "height": 64,
        "sampler": "Euler",
        "count": 1,
        "model": family,
    }
    return GenerationParams(**{**values, **overrides})


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def difference(a: bytes, b: bytes) -> int:
    """Batched matmuls round differently: images that should be the same may differ by 1."""
    return int(np.abs(pixels(a) - pixels(b)).max())


async def generate(engine: EngineWorker, params: GenerationParams, **extra) -> list[bytes]:
    [result] = await engine.generate([EngineJob(1, params, **extra)])
    return [image.png for image in result.images]


def test_each_family_loads_from_its_folder(folders):
    classes = {"flux": FluxPipeline, "flux-schnell": FluxPipeline, "sd3": StableDiffusion3Pipeline}
    for family, folder in folders.items():
        loaded = load_model(ModelSpec("m", str(folder)), CPU, torch.float32)
        assert loaded.family == family
        assert isinstance(loaded.pipe, classes[family])
        assert loaded.info().family == family


@pytest.mark.parametrize("family", ["flux", "flux-schnell", "sd3"])
async def test_a_plain_prompt_gives_diffusers_own_image(engine, folders, family):
    """Our prompt encoding, noise and scheduler are the pipeline's own: a job is exactly
    what a plain diffusers call with the same seed makes."""
    negative = "blurry" if family == "sd3" else ""
    [png] = await generate(engine, job(family, negative=negative))
    pipe = DiffusionPipeline.from_pretrained(str(folders[family]))
    pipe.set_progress_bar_config(disable=True)
    extra = {"negative_prompt": negative} if family == "sd3" else {}
    plain = pipe(
        prompt="a red cube on a table",
        width=64,
        height=64,
        num_inference_steps=3,
        guidance_scale=CFG[family],
        generator=[torch.Generator().manual_seed(3)],
        max_sequence_length=FAMILIES[family].prompt_tokens,
        **extra,
    ).images[0]
    buffer = io.BytesIO()
    plain.save(buffer, format="PNG")
    assert difference(png, buffer.getvalue()) <= 1


@pytest.mark.parametrize("family", ["flux", "sd3"])
async def test_each_image_of_a_batch_is_what_its_seed_gives_alone(engine, family):
    pngs = await generate(engine, job(family, seed=10, count=2))
    [second] = await generate(engine, job(family, seed=11))
    assert difference(pngs[1], second) <= 1
    assert difference(pngs[0], pngs[1]) > 10
    a = job(family, seed=20, prompt="a blue sea")
    b = job(family, seed=21, prompt="a lighthouse")
    results = await engine.generate([EngineJob(1, a), EngineJob(2, b)])  # two members' jobs
    [alone] = await generate(engine, b)
    assert difference(results[1].images[0].png, alone) <= 1


async def test_flux_infotext_reads_back_as_forge_writes_it(engine):
    params = job("flux", seed=5, variation_seed=9, variation_strength=0.3)
    [png] = await generate(engine, params)
    infotext = read_png_infotext(png)
    assert infotext is not None
    assert "CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 5" in infotext
    read = params_from_infotext(infotext)
    assert read.model == "tiny-flux"  # the checkpoint's name, as A1111 and Forge write it
    assert replace(read, model="flux") == params


def test_emphasis_scales_t5_and_clip_tokens_and_plain_text_is_diffusers_own(folders):
    for family in ("flux", "sd3"):
        loaded = load_model(ModelSpec("m", str(folders[family])), CPU, torch.float32)
        encoder = FlowPromptEncoder(loaded.pipe, FAMILIES[family])
        plain = encoder.encode("a red cube")
        expected = loaded.pipe.encode_prompt("a red cube", None, None, max_sequence_length=256)
        if family == "flux":
            expected = loaded.pipe.encode_prompt(
                "a red cube", None, max_sequence_length=FAMILIES[family].prompt_tokens
            )
        assert torch.equal(plain.embeds, expected[0])
        weighted = encoder.encode("a (red:1.5) cube")
        assert not torch.equal(weighted.embeds, plain.embeds)
        # A1111's "Original" emphasis brings the mean back
        assert float(weighted.embeds.mean()) == pytest.approx(float(plain.embeds.mean()), rel=1e-4)
        assert torch.equal(weighted.pooled, plain.pooled)  # pooled from the words, weightless


async def test_progress_previews_and_cancel(engine):
    seen: list[Progress] = []
    await generate(engine, job("flux", steps=4), report=seen.append)
    assert [p.step for p in seen] == [0, 1, 2, 3, 4]
    previews = [p.preview_png for p in seen if p.preview_png is not None]
    assert previews
    # FLUX's packed latents were unpacked to the 32x32 grid of its 64x64 image
    assert Image.open(io.BytesIO(previews[0])).size == (256, 256)

    stopping = EngineJob(2, job("flux", steps=50))

    def cancel_at_step_2(progress: Progress) -> None:
        if progress.step >= 2:
            stopping.cancel.set()

    stopping.report = cancel_at_step_2
    with pytest.raises(JobCancelled):
        await engine.generate([stopping])
    assert len(await generate(engine, job("flux"))) == 1  # and the engine goes on


def test_sixteen_channel_latents_preview():
    rgb = latents_to_rgb(torch.zeros(2, 16, 8, 8), "flux")
    assert rgb.shape == (2, 8, 8, 3)
    assert latents_to_rgb(torch.zeros(1, 16, 4, 4), "sd3").shape == (1, 4, 4, 3)


# -- single files, GGUF, quantization -------------------------------------------------------


def test_an_sd3_checkpoint_as_stability_ships_it_loads_and_matches_the_folder(tmp_path):
    pipe = build_tiny_sd3(tmp_path / "work")
    folder = tmp_path / "sd3"
    pipe.save_pretrained(str(folder))
    checkpoint = tmp_path / "sd3.5-tiny.safetensors"
    save_file(sd3_single_file(pipe), str(checkpoint))
    single = load_model(ModelSpec("s", str(checkpoint), config=str(folder)), CPU, torch.float32)
    from_folder = load_model(ModelSpec("f", str(folder)), CPU, torch.float32)
    assert single.family == "sd3"
    assert len(single.model_hash or "") == 10
    assert_same_images(single.pipe, from_folder.pipe)


def assert_same_images(a, b) -> None:
    call = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 2}
    first = a(generator=torch.Generator().manual_seed(3), output_type="np", **call).images
    second = b(generator=torch.Generator().manual_seed(3), output_type="np", **call).images
    np.testing.assert_allclose(first, second, atol=1e-5)


@pytest.fixture(scope="module")
def flux_dev(tmp_path_factory: pytest.TempPathFactory) -> tuple[FluxPipeline, Path]:
    root = tmp_path_factory.mktemp("flux-dev")
    pipe = build_tiny_flux(root / "work")
    pipe.save_pretrained(str(root / "flux"))
    return pipe, root / "flux"


def test_a_flux_transformer_file_loads_with_the_rest_from_config(flux_dev, tmp_path):
    pipe, folder = flux_dev
    checkpoint = tmp_path / "flux-dev-finetune.safetensors"
    save_file({k: v.contiguous() for k, v in pipe.transformer.state_dict().items()}, checkpoint)
    single = load_model(ModelSpec("s", str(checkpoint), config=str(folder)), CPU, torch.float32)
    from_folder = load_model(ModelSpec("f", str(folder)), CPU, torch.float32)
    assert single.family == "flux"
    assert_same_images(single.pipe, from_folder.pipe)


def test_a_gguf_transformer_replaces_the_models_own(flux_dev, tmp_path):
    from diffusers.quantizers.gguf.utils import GGUFLinear

    pipe, folder = flux_dev
    gguf = write_gguf(tmp_path / "flux1-dev-Q8_0.gguf", pipe.transformer.state_dict())
    spec = ModelSpec("q8", str(folder), transformer=str(gguf))
    quantized = load_model(spec, CPU, torch.float32)
    assert isinstance(quantized.pipe.transformer.transformer_blocks[0].attn.to_q, GGUFLinear)
    assert len(quantized.model_hash or "") == 10  # the GGUF file's, as Forge hashes it
    call = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 2}
    full = load_model(ModelSpec("f", str(folder)), CPU, torch.float32)
    q8 = quantized.pipe(generator=torch.Generator().manual_seed(3), output_type="np", **call)
    f32 = full.pipe(generator=torch.Generator().manual_seed(3), output_type="np", **call)
    assert np.abs(q8.images - f32.images).max() < 0.05  # 8-bit weights: close, not equal


@pytest.mark.parametrize(
    ("spec_options", "expected"),
    [
        (
            {"quantize": "nf4"},
            '"quantize": "nf4" needs a CUDA GPU (bitsandbytes), and this runs on cpu: fix '
            "model bad in SDBOT_MODELS",
        ),
        (
            {"transformer": "/nowhere/flux.gguf"},
            '"transformer" must be a .safetensors or .gguf file; /nowhere/flux.gguf is not: fix '
            "model bad in SDBOT_MODELS",
        ),
    ],
)
def test_options_a_machine_cannot_have_are_refused_in_one_line(flux_dev, spec_options, expected):
    _, folder = flux_dev
    with pytest.raises(ModelLoadError) as refused:
        load_model(ModelSpec("bad", str(folder), **spec_options), CPU, torch.float32)
    assert refused.value.detail == f"Model bad could not be loaded: {expected}"


def test_a_transformer_file_on_an_sd_model_is_refused(tiny_sd1, tmp_path):
    file = tmp_path / "t.safetensors"
    save_file({"x": torch.zeros(1)}, file)
    with pytest.raises(ModelLoadError) as refused:
        load_model(ModelSpec("sd", str(tiny_sd1), transformer=str(file)), CPU, torch.float32)
    assert refused.value.detail == (
        'Model sd could not be loaded: "transformer" is for SD 3 and FLUX models, and sd is '
        "SD 1.x: fix model sd in SDBOT_MODELS"
    )


def test_a_corrupt_or_unknown_single_file_is_told_in_one_line(tmp_path):
    corrupt = tmp_path / "half-downloaded.safetensors"
    corrupt.write_bytes(b"\xff" * 64)
    lora = tmp_path / "a-lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 8)}, lora)
    with pytest.raises(ModelLoadError) as broken:
        load_model(ModelSpec("half", str(corrupt)), CPU, torch.float32)
    assert broken.value.user_message == (
        "Model half could not be loaded: file half-downloaded.safetensors is not a readable "
        ".safetensors file"
    )
    with pytest.raises(ModelLoadError) as unknown:
        load_model(ModelSpec("odd", str(lora)), CPU, torch.float32)
    assert unknown.value.user_message.startswith(
        "Model odd could not be loaded: file a-lora.safetensors is not a model of a family this "
        "bot runs (SD 1.x, SD 2.x, SDXL, SD 3.x, FLUX.1 dev, FLUX.1 schnell)"
    )
    assert str(tmp_path) not in unknown.value.user_message


# -- what the loaded family cannot do, and where it sits ------------------------------------


async def test_the_engine_refuses_what_the_loaded_family_cannot_run(folders):
    """Settings that name the wrong family let a negative prompt through the submit checks;
    the loaded FLUX model refuses it in the same sentence, and nothing is generated."""
    spec = ModelSpec("mislabelled", str(folders["flux"]), family="sd1")
    worker = EngineWorker(EngineConfig({"mislabelled": spec}, device="cpu"))
    async with worker:
        with pytest.raises(EngineError) as refused:
            await generate(worker, job("flux", model="mislabelled", negative="blurry"))
    assert refused.value.user_message.startswith("FLUX.1 dev has no negative prompt")


@pytest.mark.parametrize("mode", ["medium", "low"])
def test_memory_modes_place_flow_pipelines(folders, mode):
    """On the CPU the modes slice and tile (offloading needs CUDA); the pipeline still runs."""
    for family in ("flux", "sd3"):
        loaded = load_model(ModelSpec("m", str(folders[family])), CPU, torch.float32)
        place(loaded.pipe, plan_for(mode), CPU, family)
        images = loaded.pipe(
            prompt="a cat", width=64, height=64, num_inference_steps=1, output_type="np"
        ).images
        assert images.shape == (1, 64, 64, 3)


# -- LoRAs ------------------------------------------------------------------------------


def test_a_flux_lora_applies_through_diffusers_load_lora_weights(folders, tmp_path):
    """engine/pipelines/lora.py works unchanged: FluxPipeline's `load_lora_weights` reads a
    diffusers/peft LoRA; at weight 0, and after the job, the model is as without it."""
    from peft import LoraConfig, get_peft_model_state_dict

    from engine.pipelines.batches import run_batch

    pipe = build_tiny_flux(tmp_path / "work")
    torch.manual_seed(5)
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    pipe.transformer.add_adapter(LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    layers = get_peft_model_state_dict(pipe.transformer)
    FluxPipeline.save_lora_weights(str(tmp_path), transformer_lora_layers=layers)
    lora = str(tmp_path / "pytorch_lora_weights.safetensors")
    spec = ModelSpec("flux", str(folders["flux"]))
    loaded = load_model(spec, CPU, torch.float32)
    config = EngineConfig({"flux": spec}, device="cpu", preview_interval=100.0)

    def run(weight: float | None) -> bytes:
        loras = () if weight is None else (("style", lora, weight),)
        params = job("flux", prompt="a cat <lora:style:1>", loras=loras)
        [result] = run_batch(loaded, config, [EngineJob(1, params)])
        return result.images[0].png

    plain = run(None)
    assert difference(run(1.0), plain) > 0
    assert difference(run(0.0), plain) == 0
    assert difference(run(None), plain) == 0

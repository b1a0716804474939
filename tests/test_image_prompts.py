"""Image prompts below Discord (issue 18): the tiny random IP-Adapter loaded through diffusers'
`load_ip_adapter` as an owner's is, what it does to the picture (weight 0: nothing; style
images: the style layers only), batches with and without image prompts kept apart, the
adapter taken out of the UNet for the jobs that have none, and the infotext keys."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.api.checks import check_params
from engine.api.errors import EngineError
from engine.api.image_prompts import locate_adapter
from engine.api.infotext import build_infotext, params_from_infotext, parse_infotext
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams, InvalidParams
from engine.api.specs import ModelSpec
from engine.pipelines.tiny_ip_adapter import WEIGHT_NAME, save_tiny_ip_adapter
from engine.worker import EngineConfig, EngineWorker
from tests.factories import tiny_params

RED, BLUE = "a" * 64, "b" * 64  # stored pictures, by key


@pytest.fixture(scope="session")
def tiny_ip_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_sd1: Path) -> Path:
    return save_tiny_ip_adapter(tmp_path_factory.mktemp("models") / "tiny-ip-adapter", tiny_sd1)


def picture_png(color: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


INPUTS = {RED: picture_png((230, 20, 20)), BLUE: picture_png((20, 20, 230), (40, 56))}


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def difference(a: bytes, b: bytes) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def spec(tiny_sd1: Path, adapter: Path | None) -> ModelSpec:
    source = str(adapter / WEIGHT_NAME) if adapter is not None else None
    return ModelSpec("tiny", str(tiny_sd1), ip_adapter=source)


@pytest.fixture
async def engine(tiny_sd1: Path, tiny_ip_adapter: Path):
    worker = EngineWorker(
        EngineConfig({"tiny": spec(tiny_sd1, tiny_ip_adapter)}, device="cpu", preview_interval=99)
    )
    worker.start()
    yield worker
    await worker.stop()


def params(**overrides) -> GenerationParams:
    return tiny_params(**{"steps": 3, "seed": 5, **overrides})


async def generate(engine: EngineWorker, p: GenerationParams) -> list[bytes]:
    [result] = await engine.generate([EngineJob(1, p, inputs=dict(INPUTS))])
    return [image.png for image in result.images]


async def test_an_image_prompt_changes_the_picture_and_weight_0_is_no_adapter(engine):
    [plain] = await generate(engine, params())
    [red] = await generate(engine, params(image_prompts=(RED,), image_weight=1.0))
    [blue] = await generate(engine, params(image_prompts=(BLUE,), image_weight=1.0))
    [off] = await generate(engine, params(image_prompts=(RED,), image_weight=0.0))
    assert difference(red, plain) > 1
    assert difference(red, blue) > 0.1, "the picture itself guides, not only the adapter"
    assert np.array_equal(pixels(off), pixels(plain))
    # Taken out of the UNet again: the next job without image prompts is the plain image.
    [again] = await generate(engine, params())
    assert np.array_equal(pixels(again), pixels(plain))


async def test_style_images_use_the_style_layers_only(engine):
    [plain] = await generate(engine, params())
    [whole] = await generate(engine, params(image_prompts=(RED,), image_weight=1.0))
    [style] = await generate(engine, params(style_images=(RED,), image_weight=1.0))
    [both] = await generate(
        engine, params(image_prompts=(BLUE,), style_images=(RED,), image_weight=1.0)
    )
    assert difference(style, plain) > 0.5
    assert difference(style, whole) > 0.5
    assert difference(both, whole) > 0.1
    assert difference(both, style) > 0.1


def test_the_style_scale_names_layers_of_the_tiny_unet(tiny_sd1, tiny_ip_adapter):
    """A block that names nothing would leave the adapter silently off (SD 1.5's up_blocks.0
    has no attention): the scale is found from the UNet, here its only attention up block."""
    from diffusers import StableDiffusionPipeline

    from engine.pipelines.ip_adapter import style_scale

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd1))
    where = locate_adapter(str(tiny_ip_adapter / WEIGHT_NAME))
    pipe.load_ip_adapter(where.source, subfolder=where.subfolder, weight_name=where.weight_name)
    scale = style_scale(pipe.unet, "sd1", 0.8)
    assert scale == {"up": {"block_0": 0.8}}
    pipe.set_ip_adapter_scale([scale])
    scales = [p.scale[0] for p in pipe.unet.attn_processors.values() if hasattr(p, "to_k_ip")]
    assert 0 < scales.count(0.8) < len(scales)


async def test_several_pictures_mix_and_their_order_is_kept_in_the_job(engine):
    [red] = await generate(engine, params(image_prompts=(RED,), image_weight=1.0))
    [mixed] = await generate(engine, params(image_prompts=(RED, BLUE), image_weight=1.0))
    assert difference(mixed, red) > 0.1


async def test_jobs_with_and_without_image_prompts_never_share_a_batch(engine):
    plain, prompted = params(), params(image_prompts=(RED,), image_weight=1.0)
    assert plain.batch_key() != prompted.batch_key()
    assert prompted.batch_key() != replace(prompted, image_weight=0.8).batch_key()
    assert prompted.batch_key() != replace(prompted, image_prompts=(BLUE,)).batch_key()
    with pytest.raises(EngineError, match="Generation failed") as caught:
        await engine.generate([EngineJob(1, plain), EngineJob(2, prompted, inputs=INPUTS)])
    assert "cannot share a batch" in str(caught.value.__cause__)


async def test_a_batch_of_two_jobs_with_the_same_pictures_equals_each_alone(engine):
    first = params(image_prompts=(RED,), image_weight=1.0, prompt="a cat")
    second = replace(first, prompt="a dog", seed=9)
    results = await engine.generate(
        [EngineJob(1, first, inputs=INPUTS), EngineJob(2, second, inputs=INPUTS)]
    )
    for result, alone in zip(results, (first, second), strict=True):
        [own] = await generate(engine, alone)
        assert np.abs(pixels(result.images[0].png) - pixels(own)).max() <= 1


async def test_image_prompts_with_and_hires_fix_and_cfg_below_1(engine):
    """Every pipeline call of the batch gets the embeddings: the hires pass's img2img (a
    derived pipeline, without the image encoder), AND's widened UNet batch, and a call
    without classifier-free guidance (only the positive rows)."""
    base = params(image_prompts=(RED,), image_weight=1.0)
    [hires] = await generate(engine, replace(base, hires_scale=2.0, hires_steps=2))
    assert Image.open(io.BytesIO(hires)).size == (128, 128)
    [anded] = await generate(engine, replace(base, prompt="a cat AND a dog"))
    [unguided] = await generate(engine, replace(base, cfg=1.0))
    [plain_unguided] = await generate(engine, params(cfg=1.0))
    assert difference(unguided, plain_unguided) > 1
    assert pixels(anded).shape == (64, 64, 3)


async def test_an_adapter_that_cannot_load_fails_the_job_in_a_sentence(tmp_path, tiny_sd1):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ip-adapter.safetensors").write_bytes(b"not a safetensors file")
    model = ModelSpec("tiny", str(tiny_sd1), ip_adapter=str(broken / "ip-adapter.safetensors"))
    async with EngineWorker(EngineConfig({"tiny": model}, device="cpu")) as worker:
        with pytest.raises(EngineError, match="could not be loaded") as caught:
            await generate(worker, params(image_prompts=(RED,)))
        assert str(broken) not in str(caught.value)
        [plain] = await generate(worker, params())  # the model still serves other jobs
        assert pixels(plain).shape == (64, 64, 3)


def test_infotext_records_the_image_prompts_and_reads_the_weight_back():
    job = params(image_prompts=(RED, BLUE), style_images=(RED,), image_weight=0.75)
    text = build_infotext(job, seed=5, model_hash=None, extra={"IP-Adapter": "ip-adapter_sd15"})
    values = parse_infotext(text).values
    assert values["IP-Adapter"] == "ip-adapter_sd15"
    assert values["IP-Adapter images"] == "3"
    assert values["IP-Adapter weight"] == "0.75"
    assert values["IP-Adapter mode"] == "image and style"
    back = params_from_infotext(text)
    assert back.image_weight == 0.75
    assert back.image_prompts == ()  # never the pictures
    assert back.style_images == ()
    style = build_infotext(params(style_images=(RED,)), seed=5, model_hash=None)
    assert parse_infotext(style).values["IP-Adapter mode"] == "style"
    assert "IP-Adapter" not in build_infotext(params(), seed=5, model_hash=None)


def test_image_prompts_travel_as_json_and_name_their_inputs():
    job = params(image_prompts=(RED, BLUE), style_images=(BLUE,))
    back = GenerationParams.from_dict(json.loads(json.dumps(job.to_dict())))
    assert back == job
    assert job.input_keys == [RED, BLUE, BLUE]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image_prompts": (RED,) * 6}, "At most 5 image prompts, not 6."),
        ({"image_prompts": (RED,) * 3, "style_images": (BLUE,) * 3}, "At most 5"),
        ({"image_prompts": (RED,), "image_weight": 2.5}, "Image weight must be 0-2, not 2.5."),
        (
            {"image_prompts": (RED,), "mode": "img2img", "init_image": BLUE},
            "Image prompts work with text to image",
        ),
    ],
)
def test_what_image_prompts_cannot_do_is_refused_in_a_sentence(tiny_sd1, changes, message):
    models = {"tiny": spec(tiny_sd1, Path("/models/ip"))}
    with pytest.raises(InvalidParams, match=message.replace("(", r"\(")):
        check_params(params(**changes), models, 100)


def test_a_model_without_an_adapter_or_of_another_family_refuses_image_prompts(tiny_sd1):
    with pytest.raises(InvalidParams, match=r"^Image prompts are not set up for model tiny"):
        check_params(params(image_prompts=(RED,)), {"tiny": spec(tiny_sd1, None)}, 100)
    flux = ModelSpec("tiny", "black-forest-labs/FLUX.1-dev", ip_adapter="/models/ip.safetensors")
    job = params(image_prompts=(RED,), cfg=3.5, negative="", sampler="Euler")
    with pytest.raises(InvalidParams, match=r"not available for FLUX\.1 dev models"):
        check_params(job, {"tiny": flux}, 100)
    # With pictures the prompt may be empty (/blend); without, it may not.
    check_params(params(prompt="", image_prompts=(RED,)), {"tiny": spec(tiny_sd1, Path("/m"))}, 9)
    with pytest.raises(InvalidParams, match="The prompt is empty"):
        check_params(params(prompt=""), {"tiny": spec(tiny_sd1, Path("/m"))}, 9)


@pytest.mark.parametrize(
    ("source", "encoder", "expected"),
    [
        (
            "h94/IP-Adapter/models/ip-adapter_sd15.safetensors",
            None,
            ("h94/IP-Adapter", "models", "ip-adapter_sd15.safetensors", "image_encoder"),
        ),
        (
            "h94/IP-Adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
            "models/image_encoder",
            (
                "h94/IP-Adapter",
                "sdxl_models",
                "ip-adapter_sdxl_vit-h.safetensors",
                "models/image_encoder",
            ),
        ),
    ],
)
def test_hub_adapters_are_located_as_load_ip_adapter_takes_them(source, encoder, expected):
    where = locate_adapter(source, encoder)
    assert (
        where.source,
        where.subfolder,
        where.weight_name,
        where.image_encoder_folder,
    ) == expected


def test_local_files_and_folders_are_located_and_bad_sources_refused(tmp_path, make_settings):
    (tmp_path / "ip.bin").write_bytes(b"x")
    assert locate_adapter(str(tmp_path / "ip.bin")).source == str(tmp_path)
    assert locate_adapter(str(tmp_path)).weight_name == "ip.bin"
    for bad, why in (
        ("/models/ip-adapter", "not an IP-Adapter weights file"),
        ("ip.safetensors", "neither a file here nor a Hub file"),
        ("h94/ip.safetensors", "neither a file here nor a Hub file"),
    ):
        with pytest.raises(ValueError, match=why):
            locate_adapter(bad)
    from pydantic import ValidationError

    models = {"tiny": {"source": "x/y", "ip_adapter": "/models/ip-adapter.txt"}}
    with pytest.raises(ValidationError, match="not an IP-Adapter weights file"):
        make_settings(models=models)


async def test_sdxl_takes_image_prompts_style_images_and_and(tmp_path_factory, tiny_sdxl):
    """SDXL's UNet gets its pooled text and time ids beside the image embeddings; its style
    layer is up_blocks.0's middle attention (diffusers' InstantStyle recipe)."""
    adapter = save_tiny_ip_adapter(tmp_path_factory.mktemp("models") / "xl-ip", tiny_sdxl)
    model = ModelSpec("xl", str(tiny_sdxl), ip_adapter=str(adapter / WEIGHT_NAME))
    async with EngineWorker(EngineConfig({"xl": model}, device="cpu")) as worker:
        base = params(model="xl")
        [plain] = await generate(worker, base)
        [red] = await generate(worker, replace(base, image_prompts=(RED,), image_weight=1.0))
        [style] = await generate(worker, replace(base, style_images=(RED,), image_weight=1.0))
        [off] = await generate(worker, replace(base, image_prompts=(RED,), image_weight=0.0))
        [anded] = await generate(
            worker, replace(base, prompt="a cat AND a dog", image_prompts=(RED,))
        )
    assert difference(red, plain) > 1
    assert difference(style, plain) > 0.5
    assert difference(style, red) > 0.5
    assert np.array_equal(pixels(off), pixels(plain))
    assert pixels(anded).shape == (64, 64, 3)

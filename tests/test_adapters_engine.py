"""LoRAs named in a job's parameters, applied by the engine thread for that job alone."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.api.infotext import parse_infotext
from engine.api.jobs import EngineJob
from engine.api.specs import ModelSpec
from engine.imaging.images import read_png_infotext
from engine.pipelines.loading import load_model
from engine.worker import EngineConfig, EngineWorker
from tests.factories import tiny_params
from tests.test_lora import make_lora


@pytest.fixture
async def engine(tiny_sd1: Path):
    worker = EngineWorker(
        EngineConfig({"tiny": ModelSpec("tiny", str(tiny_sd1))}, device="cpu", preview_interval=0)
    )
    worker.start()
    yield worker
    await worker.stop()


@pytest.fixture
def lora_file(tiny_sd1: Path, tmp_path: Path) -> Path:
    loaded = load_model(ModelSpec("tiny", str(tiny_sd1)), torch.device("cpu"), torch.float32)
    return make_lora(loaded, tmp_path / "rex.safetensors", seed=3)


async def pixels_and_infotext(engine: EngineWorker, **overrides) -> tuple[np.ndarray, str]:
    from PIL import Image

    params = tiny_params(sampler="Euler", **overrides)
    [result] = await engine.generate([EngineJob(0, params)])
    image = result.images[0]
    return np.asarray(Image.open(io.BytesIO(image.png))), read_png_infotext(image.png)


async def test_a_lora_changes_the_image_at_weight_1_and_not_at_0(engine, lora_file):
    base, _ = await pixels_and_infotext(engine, prompt="a dog")
    tagged = "a dog <lora:rex:1>"
    off, _ = await pixels_and_infotext(
        engine, prompt="a dog <lora:rex:0>", loras=(("rex", str(lora_file), 0.0),)
    )
    on, text = await pixels_and_infotext(
        engine, prompt=tagged, loras=(("rex", str(lora_file), 1.0),)
    )
    assert np.array_equal(base, off), "the tag is not encoded as words; weight 0 is no LoRA"
    assert not np.array_equal(base, on)
    info = parse_infotext(text)
    assert info.prompt == tagged, "the infotext keeps the tag, as A1111's does"
    assert info.values["Lora hashes"].startswith("rex: ")
    # and the next job without it is the base image again
    again, _ = await pixels_and_infotext(engine, prompt="a dog")
    assert np.array_equal(base, again)


async def test_jobs_with_other_loras_never_share_a_batch(lora_file):
    plain = tiny_params()
    with_lora = tiny_params(loras=(("rex", str(lora_file), 1.0),))
    assert plain.batch_key() != with_lora.batch_key()
    assert type(with_lora).from_dict(with_lora.to_dict()) == with_lora

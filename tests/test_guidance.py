"""A1111's CFG below a scale of 1 (CFGDenoiser: `uncond + cfg * (cond - uncond)` at every
scale), where diffusers drops the negative prompt and uses the conditional prediction alone."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams
from engine.api.specs import ModelSpec
from engine.pipelines import image_pipes, txt2img
from engine.pipelines.conditioned import generate_conditioned
from engine.pipelines.loading import LoadedModel, load_model
from engine.pipelines.txt2img import generate_batch
from tests.factories import tiny_params


@pytest.fixture(scope="module")
def sd1(tiny_sd1) -> LoadedModel:
    return load_model(ModelSpec("tiny", str(tiny_sd1)), torch.device("cpu"), torch.float32)


def image(loaded: LoadedModel, params: GenerationParams, **inputs: bytes) -> np.ndarray:
    with torch.inference_mode():
        if params.mode == "txt2img":
            [result] = generate_batch(loaded, [EngineJob(1, params)], 60.0)
        else:
            [result] = generate_conditioned(loaded, [EngineJob(1, params, inputs=inputs)], 60.0)
    return np.asarray(Image.open(io.BytesIO(result.images[0].png)).convert("RGB"), dtype=np.int16)


def unet_rows(loaded: LoadedModel, params: GenerationParams) -> list[int]:
    rows: list[int] = []
    handle = loaded.pipe.unet.conv_in.register_forward_pre_hook(
        lambda module, args: rows.append(args[0].shape[0])
    )
    try:
        image(loaded, params)
    finally:
        handle.remove()
    return rows


def test_cfg_0_is_the_negative_prompts_image(sd1):
    # uncond + 0 * (cond - uncond): A1111 denoises with the negative prompt alone.
    zero = image(sd1, tiny_params(prompt="a red cube", negative="a blue sea", cfg=0.0))
    negative_alone = image(sd1, tiny_params(prompt="a blue sea", negative="", cfg=1.0))
    assert np.abs(zero - negative_alone).max() <= 2


@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
@pytest.mark.parametrize("cfg", [0.0, 0.4, 0.9])
def test_the_prediction_the_sampler_gets_is_a1111s(sd1, monkeypatch, mode, cfg):
    raw: list[torch.Tensor] = []
    guided: list[torch.Tensor] = []
    module = txt2img if mode == "txt2img" else image_pipes
    real = module.make_scheduler

    def make(*args: Any, **kwargs: Any) -> Any:
        scheduler = real(*args, **kwargs)
        step = scheduler.step

        def spy(model_output: torch.Tensor, *rest: Any, **options: Any) -> Any:
            guided.append(model_output.clone())
            return step(model_output, *rest, **options)

        scheduler.step = spy
        return scheduler

    monkeypatch.setattr(module, "make_scheduler", make)
    # Registered before the call, so it sees the UNet's own [negative; positive] rows.
    handle = sd1.pipe.unet.register_forward_hook(lambda m, a, out: raw.append(out[0].clone()))
    p = tiny_params(prompt="a red cube", negative="a blue sea", cfg=cfg, steps=4)
    try:
        if mode == "txt2img":
            image(sd1, p)
        else:
            image(sd1, replace(p, mode="img2img", init_image="k", denoise=0.8), k=green())
    finally:
        handle.remove()
    assert len(raw) == len(guided) > 0
    for out, prediction in zip(raw, guided, strict=True):
        uncond, cond = out.chunk(2)
        torch.testing.assert_close(prediction, uncond + cfg * (cond - uncond), atol=1e-5, rtol=0)


def green() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 140, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_cfg_1_and_up_keep_diffusers_passes(sd1):
    # Negative and positive rows in every call below 1 and above it; at 1 the positive alone
    # (A1111's formula at 1 is the conditional prediction).
    assert set(unet_rows(sd1, tiny_params(cfg=0.5))) == {2}
    assert set(unet_rows(sd1, tiny_params(cfg=1.0))) == {1}
    assert set(unet_rows(sd1, tiny_params(cfg=7.0))) == {2}

"""Prompt editing, alternation and AND in real tiny-model runs: what the UNet receives at
each model call, and the images."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.api.jobs import EngineJob
from engine.api.specs import ModelSpec
from engine.pipelines.conditioned import generate_conditioned
from engine.pipelines.control import load_controlnet
from engine.pipelines.loading import LoadedModel, load_model
from engine.pipelines.prompts import PromptEncoder
from engine.pipelines.scheduled_conditioning import PromptScheduler
from engine.pipelines.tiny import save_tiny_controlnet
from engine.pipelines.txt2img import generate_batch, image_noise, set_sampler
from tests.factories import tiny_params

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sd1(tiny_sd1: Path) -> LoadedModel:
    return load_model(ModelSpec("tiny", str(tiny_sd1)), CPU, torch.float32)


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl: Path) -> LoadedModel:
    return load_model(ModelSpec("tiny", str(tiny_sdxl)), CPU, torch.float32)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def difference(a: bytes, b: bytes) -> int:
    """Batched matmuls round differently: images that should be equal may differ by 1."""
    return int(np.abs(pixels(a) - pixels(b)).max())


@contextmanager
def unet_inputs(loaded: LoadedModel) -> Iterator[list[dict[str, Any]]]:
    """Every UNet call's conditioning, as the pipeline hands it over."""
    calls: list[dict[str, Any]] = []

    def record(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        added = kwargs.get("added_cond_kwargs") or {}
        calls.append(
            {
                "hidden": kwargs["encoder_hidden_states"].clone(),
                "pooled": added.get("text_embeds"),
            }
        )

    handle = loaded.pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def run(loaded: LoadedModel, *all_params: Any) -> list[list[bytes]]:
    jobs = [EngineJob(index, p) for index, p in enumerate(all_params)]
    results = generate_batch(loaded, jobs, preview_interval=60.0)
    return [[image.png for image in result.images] for result in results]


def positives(calls: list[dict[str, Any]], images: int = 1) -> list[torch.Tensor]:
    """The positive rows of each guided call ([negative rows; positive rows])."""
    return [call["hidden"][images:] for call in calls]


def which(calls: list[dict[str, Any]], loaded: LoadedModel, texts: dict[str, str]) -> list[str]:
    """For each call, the name of the text whose embeddings the positive row holds."""
    encoder = PromptEncoder(loaded.pipe, loaded.family)
    encoded = {name: encoder.encode(text).embeds for name, text in texts.items()}
    names = []
    for row in positives(calls):
        found = [name for name, embeds in encoded.items() if torch.equal(row[:1], embeds)]
        names.append(found[0] if found else "?")
    return names


CAT_DOG = {"cat": "a cat", "dog": "a dog"}


@pytest.mark.parametrize(
    ("sampler", "steps", "prompt", "expected"),
    [
        # 4 steps: [(2, cat), (4, dog)]; call k takes the first entry ending at k or later.
        ("Euler", 4, "a [cat:dog:2]", ["cat", "cat", "cat", "dog"]),
        ("Euler", 4, "a [cat:dog:0.5]", ["cat", "cat", "cat", "dog"]),
        ("Euler a", 4, "a [cat:dog:0.25]", ["cat", "cat", "dog", "dog"]),
        # Alternation: ends 1, 2, 3, 4 with cat, dog, cat, dog.
        ("Euler a", 4, "a [cat|dog]", ["cat", "cat", "dog", "cat"]),
        # Second-order samplers: A1111 lays the schedule over 2 x 3 steps and counts its
        # model calls, 2 x 3 - 1 of them (the last step is Euler's), as the pipeline does.
        ("Heun", 3, "a [cat:dog:0.5]", ["cat", "cat", "cat", "cat", "dog"]),
        ("Heun", 3, "a [cat:dog:2]", ["cat", "cat", "cat", "dog", "dog"]),
        ("DPM2", 3, "a [cat:dog:0.5]", ["cat", "cat", "cat", "cat", "dog"]),
        ("DPM2 a", 3, "a [cat:dog:1]", ["cat", "cat", "dog", "dog", "dog"]),
        # DPM++ SDE calls the model twice a step, as A1111's: 7 calls over a schedule of 8.
        ("DPM++ SDE", 4, "a [cat:dog:0.5]", ["cat", "cat", "cat", "cat", "cat", "dog", "dog"]),
        # DDIM steps on A1111's timesteps, all but the lowest: 3 calls for 4 steps.
        ("DDIM", 4, "a [cat:dog:0.5]", ["cat", "cat", "cat"]),
    ],
)
def test_the_conditioning_changes_at_a1111s_model_call(sd1, sampler, steps, prompt, expected):
    with unet_inputs(sd1) as calls:
        run(sd1, tiny_params(prompt=prompt, sampler=sampler, steps=steps))
    assert which(calls, sd1, CAT_DOG) == expected


def test_sdxl_switches_the_pooled_embedding_too(sdxl):
    with unet_inputs(sdxl) as calls:
        run(sdxl, tiny_params(prompt="a [cat:dog:0.5]", negative="ugly", steps=4))
    encoder = PromptEncoder(sdxl.pipe, "sdxl")
    cat, dog = encoder.encode("a cat"), encoder.encode("a dog")
    assert which(calls, sdxl, CAT_DOG) == ["cat", "cat", "cat", "dog"]
    pooled = [call["pooled"][1:] for call in calls]  # [negative; positive]
    assert cat.pooled is not None
    assert dog.pooled is not None
    assert torch.equal(pooled[2], cat.pooled)
    assert torch.equal(pooled[3], dog.pooled)


def test_the_negative_prompt_is_scheduled_and_the_empty_one_stays_zeros(sd1, sdxl):
    with unet_inputs(sd1) as calls:
        run(sd1, tiny_params(prompt="a cat", negative="[ugly:blurry:0.5]", steps=4))
    encoder = PromptEncoder(sd1.pipe, "sd1")
    negatives = [call["hidden"][:1] for call in calls]
    assert torch.equal(negatives[2], encoder.encode("ugly").embeds)
    assert torch.equal(negatives[3], encoder.encode("blurry").embeds)
    with unet_inputs(sdxl) as calls:
        run(sdxl, tiny_params(prompt="a [cat:dog:0.5]", negative="", steps=4))
    assert all(not call["hidden"][:1].any() for call in calls)


def test_a_prompt_without_edits_gives_the_plain_pipelines_own_image(sd1):
    """Nothing is swapped in when no schedule moves: the image is a plain pipeline call's."""
    p = tiny_params(prompt="a (cat:1.2), [dog] BREAK the cat", negative="ugly", sampler="Heun")
    [[png]] = run(sd1, p)
    set_sampler(sd1, p.sampler)
    pair = PromptEncoder(sd1.pipe, "sd1").encode_pair(p.prompt, p.negative)
    side = 64 // sd1.pipe.vae_scale_factor
    noise, generator = image_noise((1, 4, side, side), torch.float32, p.seed)
    reference = sd1.pipe(
        prompt_embeds=pair.positive.embeds,
        negative_prompt_embeds=pair.negative.embeds,
        width=64,
        height=64,
        num_inference_steps=p.steps,
        guidance_scale=p.cfg,
        generator=[generator],
        latents=noise,
        output_type="pil",
    ).images[0]
    assert np.array_equal(pixels(png), np.asarray(reference, dtype=np.int16))


def test_jobs_with_different_schedules_share_a_batch_and_keep_their_images(sd1):
    first = tiny_params(prompt="a [cat:dog:0.5]", seed=3, steps=4)
    second = tiny_params(prompt="a [dog|cat]", negative="[ugly::2]", seed=4, steps=4, count=2)
    with unet_inputs(sd1) as calls:
        together = run(sd1, first, second)
    assert len(calls) == 4  # one pipeline call: three images' rows in each UNet call
    assert all(call["hidden"].shape[0] == 6 for call in calls)
    for images, p in zip(together, (first, second), strict=True):
        [alone] = run(sd1, p)
        assert all(difference(a, b) <= 1 for a, b in zip(images, alone, strict=True))


def test_img2img_counts_the_steps_it_runs_over_the_whole_schedule(sd1):
    """A1111 lays the schedule over all 10 steps and counts from the first step it runs."""
    init = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 140, 30)).save(init, "PNG")
    p = tiny_params(prompt="a [cat:dog:0.3]", mode="img2img", init_image="k", denoise=0.5, steps=10)
    with unet_inputs(sd1) as calls:
        generate_conditioned(sd1, [EngineJob(1, p, inputs={"k": init.getvalue()})], 60.0)
    # A1111 runs int(0.5 * 10) + 1 = 6 steps of img2img, from the sixth sigma of ten.
    assert which(calls, sd1, CAT_DOG) == ["cat", "cat", "cat", "cat", "dog", "dog"]


# -- AND ------------------------------------------------------------------------------------


def test_and_runs_one_conditional_row_per_sub_prompt(sd1):
    rows = []
    handle = sd1.pipe.unet.conv_in.register_forward_pre_hook(
        lambda module, args: rows.append(args[0].shape[0])
    )
    try:
        run(sd1, tiny_params(prompt="a cat AND a dog :0.5 AND a [cat:dog:2]", count=2))
    finally:
        handle.remove()
    assert rows == [2 + 2 * 3] * 3  # two negative rows, three sub-prompts for each image


@pytest.mark.parametrize("model", ["sd1", "sdxl"])
def test_and_weights_compose_as_a1111s_guidance(model, request):
    loaded = request.getfixturevalue(model)
    base = dict(sampler="Euler", negative="ugly", seed=7)
    [[plain]] = run(loaded, tiny_params(prompt="a cat", **base))
    # (cat - uncond) * 0.5 twice is (cat - uncond) once.
    [[halves]] = run(loaded, tiny_params(prompt="a cat :0.5 AND a cat:0.5", **base))
    assert difference(halves, plain) <= 1
    # A lone weight scales the guidance: 7 * (cat - uncond) * 2 is CFG 14's.
    [[doubled]] = run(loaded, tiny_params(prompt="a cat:2", **base))
    [[cfg14]] = run(loaded, tiny_params(prompt="a cat", cfg=14.0, **base))
    assert difference(doubled, cfg14) <= 1
    [[other]] = run(loaded, tiny_params(prompt="a cat AND a dog", **base))
    assert difference(other, plain) > 1


def test_and_beside_a_plain_job_leaves_the_plain_one_as_it_is_alone(sd1):
    composed = tiny_params(prompt="a cat AND a dog :-0.5", seed=2)
    plain = tiny_params(prompt="a dog", seed=5)
    together = run(sd1, composed, plain)
    for images, p in zip(together, (composed, plain), strict=True):
        [alone] = run(sd1, p)
        assert difference(images[0], alone[0]) <= 1


def test_and_with_cfg_1_keeps_a1111s_formula(sd1):
    # diffusers skips the unconditional pass at CFG 1; A1111's sum needs it, so it is made.
    [[once]] = run(sd1, tiny_params(prompt="a cat :0.5 AND a cat :0.5", cfg=1.0, seed=4))
    [[plain]] = run(sd1, tiny_params(prompt="a cat", cfg=1.0, seed=4))
    assert difference(once, plain) <= 1


def test_and_reaches_the_controlnet_with_every_sub_prompt(tmp_path, tiny_sd1):
    folder = save_tiny_controlnet(tmp_path / "canny", tiny_sd1)
    spec = ModelSpec("tiny", str(tiny_sd1), controlnets={"canny": str(folder)})
    loaded = load_model(spec, CPU, torch.float32)
    control = io.BytesIO()
    Image.new("RGB", (64, 64), (250, 250, 20)).save(control, "PNG")

    def made(prompt: str) -> bytes:
        p = tiny_params(prompt=prompt, control_type="canny", control_image="c", steps=3)
        job = EngineJob(1, p, inputs={"c": control.getvalue()})
        [result] = generate_conditioned(loaded, [job], 60.0)
        return result.images[0].png

    rows = []
    controlnet = load_controlnet(loaded, "canny")
    handle = controlnet.conv_in.register_forward_pre_hook(
        lambda module, args: rows.append(args[0].shape[0])
    )
    try:
        halves = made("a [cat:dog:0.5] :0.5 AND a [cat:dog:0.5] :0.5")
    finally:
        handle.remove()
    assert rows == [1 + 2] * 3  # the negative row and both sub-prompts' rows
    assert difference(halves, made("a [cat:dog:0.5]")) <= 1


def test_malformed_prompts_schedule_and_encode_without_raising(sd1, sdxl):
    from tests.test_prompts import malformed_prompts

    for loaded in (sd1, sdxl):
        scheduler = PromptScheduler(loaded.pipe, loaded.family, clip_skip=2)
        for text in [*malformed_prompts()[:-2], "[a|b] AND [c:d:1e400] AND ::"]:
            for syntax in ("a1111", "auto"):
                job = scheduler.job(text, text[::-1], syntax, "Heun", 3)
                for call in range(job.steps + 1):
                    cond = job.at(call)
                    shapes = {positive.embeds.shape for positive, _ in cond.positives}
                    assert shapes == {cond.negative.embeds.shape}

"""/dream, /models and the result buttons on FLUX.1 and SD 3 models through discord.py's real
stack (SimCord), the engine thread and SQLite: what the family cannot do is refused in one
sentence before anything is charged, and what it can do posts an image whose infotext Forge
reads; every button under such a result runs and posts a picture."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from safetensors.torch import load as safetensors_load

from data import JobStatus
from engine.api.infotext import params_from_infotext, parse_infotext
from engine.imaging.images import read_png_infotext
from engine.pipelines.tiny_families import save_tiny_family
from tests.conftest import wait_until
from tests.discord_helpers import has_result
from tests.test_images_discord import picture as images_picture
from tests.test_images_discord import png as images_png
from tests.test_reframe_discord import dream, job_of, picture, replies
from tests.test_train_discord import private_answer, trained

TINY = {"default_size": (64, 64), "max_pixels": 128 * 128}


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_family(tmp_path_factory.mktemp("models") / "tiny-flux", "flux")


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_family(tmp_path_factory.mktemp("models") / "tiny-sd3", "sd3")


@pytest.fixture
def settings(make_settings, tiny_flux, tiny_sd3, tiny_sd1):
    return make_settings(
        models={
            "flux": {"source": str(tiny_flux), **TINY, "note": "tiny random FLUX.1 dev"},
            "sd3": {"source": str(tiny_sd3), **TINY},
            "tiny": {"source": str(tiny_sd1), **TINY},
        },
        default_model="flux",
    )


async def test_a_negative_prompt_on_flux_is_refused_in_one_sentence_and_costs_nothing(sim):
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "dream", prompt="a cat", negative="blurry", steps=2)
    assert result.ephemeral
    assert result.response.content == (
        "FLUX.1 dev has no negative prompt (its guidance is distilled into the model, so "
        "nothing runs against one): leave it empty and say in the prompt what you want."
    )
    [error] = sim.expected_errors()
    assert "no negative prompt" in str(error.__cause__ or getattr(error, "original", error))
    assert await sim.bot.scheduler.jobs.with_status(*JobStatus) == []  # no job, no charge


async def test_a_sampler_flux_has_no_scheduler_for_is_refused_by_name(sim):
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "dream", prompt="a cat", sampler="DPM++ 2M", steps=2)
    assert result.response.content == (
        "FLUX.1 dev models sample with Euler only (flow matching has no scheduler for DPM++ 2M)."
    )
    sim.expected_errors()


async def test_dream_on_flux_posts_an_image_whose_infotext_forge_reads(sim):
    alice = sim.member("alice")
    result = await alice.slash(
        sim.channel, "dream", prompt="a (red:1.2) cube", seed=42, steps=2, cfg=4.0
    )
    await wait_until(sim.env, lambda: has_result(result))
    [attachment] = result.response.attachments
    infotext = read_png_infotext(await attachment.read())
    assert infotext is not None
    assert "Sampler: Euler, Schedule type: Automatic, CFG scale: 1, Distilled CFG Scale: 4" in (
        infotext
    )
    params = params_from_infotext(infotext)
    assert (params.prompt, params.seed, params.steps, params.cfg) == ("a (red:1.2) cube", 42, 2, 4)
    assert (params.model, params.sampler) == ("tiny-flux", "Euler")  # the folder, no path


async def test_models_says_what_flux_and_sd3_cannot_do(sim):
    listed = await sim.member("alice").slash(sim.channel, "models")
    assert listed.response.content.splitlines() == [
        "**flux** (default), 64x64 (FLUX.1 dev: 28 steps, distilled CFG 3.5, Euler only; no "
        "negative prompt, clip skip, BREAK, prompt editing and AND, ControlNet, embeddings): "
        "tiny random FLUX.1 dev",
        "**sd3**, 64x64 (SD 3.x: 28 steps, CFG 3.5, Euler only; no clip skip, BREAK, prompt "
        "editing and AND, ControlNet, embeddings)",
        "**tiny**, 64x64",
    ]


async def clicked(sim: Any, member: Any, message: Any, custom_id: str) -> Any:
    """Press a button under `message`; the finished reply it posts."""
    click = await member.click(message, custom_id=custom_id)
    assert click.response.content.startswith("Queued as job "), click.response.content
    job = int(click.response.content.split()[3].rstrip(","))
    await wait_until(sim.env, lambda: any(job_of(m) == job for m in replies(sim, message)))
    await sim.bot.scheduler.drain()
    [reply] = [m for m in replies(sim, message) if job_of(m) == job]
    return reply


# Each button, and the size of the picture it makes from a 128x128 result (the model's
# largest): U doubles it, in tiles; a zoom out keeps it; a pan left widens it by half, shrunk
# to fit the model, in FLUX's and SD 3's multiples of 16.
BUTTONS = {
    "upscale": (256, 256),
    "vary": (128, 128),
    "strong": (128, 128),
    "reroll": (128, 128),
    "zoom2": (128, 128),
    "panleft": (144, 96),
}


@pytest.mark.parametrize("model", ["flux", "sd3"])
async def test_every_button_under_a_flow_result_runs_and_posts_a_picture(sim, model):
    alice = sim.member("alice")
    message = await dream(sim, alice, model=model, seed=7)
    job = job_of(message)
    for name, size in BUTTONS.items():
        custom_id = f"sd:{name}:{job}" + ("" if name == "reroll" else ":0")
        image, infotext = await picture(await clicked(sim, alice, message, custom_id))
        assert image.size == size, name
        params = params_from_infotext(infotext)
        assert (params.model, params.prompt) == (f"tiny-{model}", "a cat"), name
        assert ("Distilled CFG Scale" in infotext) is (model == "flux"), name
    sim.expected_errors()  # none: every click ran


async def test_train_a_flux_lora_then_dream_with_its_tag_and_not_on_sd1(sim):
    alice = sim.member("alice")
    done = await trained(sim, alice)  # the default model: FLUX.1 dev
    assert "`/dream prompt: <lora:rex:0.8> a photo of zwxrex dog`" in done.content
    sample = parse_infotext(read_png_infotext(await done.attachments[0].read())).values
    assert sample["Distilled CFG Scale"] == "3.5"
    [dm] = alice.user.dm_channel.history()
    assert "`rex.safetensors` is attached for Forge and ComfyUI" in dm.content
    copy = safetensors_load(await dm.attachments[-1].read())
    assert all(key.startswith("transformer.") for key in copy)  # diffusers' keys, as they read

    prompt = "<lora:rex:0.8> a photo of zwxrex dog"
    used = await alice.slash(sim.channel, "dream", prompt=prompt, steps=2)
    await wait_until(sim.env, lambda: has_result(used))
    png = await used.response.attachments[0].read()
    assert parse_infotext(read_png_infotext(png)).values["Lora hashes"].startswith("rex: ")

    before = await sim.bot.scheduler.jobs.with_status(*JobStatus)
    on_sd1 = await alice.slash(sim.channel, "dream", prompt=prompt, model="tiny", steps=2)
    assert private_answer(on_sd1) == (
        "❌ rex was trained on flux (flux); it cannot be used with a sd1 model."
    )
    assert await sim.bot.scheduler.jobs.with_status(*JobStatus) == before  # no job, no charge
    sim.expected_errors()


async def test_img2img_on_flux_sizes_an_odd_picture_to_sixteens_and_inpaint_needs_a_mask(sim):
    alice = sim.member("alice")
    odd = images_picture((100, 75))
    result = await alice.slash(
        sim.channel, "img2img", image=("odd.png", images_png(odd)), prompt="a cat", steps=2
    )
    await wait_until(sim.env, lambda: has_result(result))
    [attachment] = result.response.attachments
    data = await attachment.read()
    width, height = Image.open(io.BytesIO(data)).size
    assert (width % 16, height % 16) == (0, 0)
    values = parse_infotext(read_png_infotext(data)).values
    assert (values["Denoising strength"], values["Distilled CFG Scale"]) == ("0.75", "3.5")

    jobs = await sim.bot.scheduler.jobs.with_status(*JobStatus)
    refused = await alice.slash(
        sim.channel, "inpaint", image=("flat.png", images_png(odd)), prompt="a hole", steps=2
    )
    assert private_answer(refused) == (
        "❌ Attach a mask, or an image with transparent pixels where it should change."
    )
    assert await sim.bot.scheduler.jobs.with_status(*JobStatus) == jobs  # nothing queued
    sim.expected_errors()

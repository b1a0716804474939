"""/dream and /models on a FLUX.1 model through discord.py's real stack (SimCord), the engine
thread and SQLite: what the family cannot do is refused in one sentence before anything is
charged, and what it can do posts an image whose infotext Forge reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from data import JobStatus
from engine.api.infotext import params_from_infotext
from engine.imaging.images import read_png_infotext
from engine.pipelines.tiny_families import save_tiny_family
from tests.conftest import wait_until
from tests.discord_helpers import has_result

TINY = {"default_size": (64, 64), "max_pixels": 128 * 128}


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_family(tmp_path_factory.mktemp("models") / "tiny-flux", "flux")


@pytest.fixture
def settings(make_settings, tiny_flux, tiny_sd1):
    return make_settings(
        models={
            "flux": {"source": str(tiny_flux), **TINY, "note": "tiny random FLUX.1 dev"},
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


async def test_models_says_what_flux_cannot_do(sim):
    listed = await sim.member("alice").slash(sim.channel, "models")
    assert listed.response.content.splitlines() == [
        "**flux** (default), 64x64 (FLUX.1 dev: 28 steps, distilled CFG 3.5, Euler only; no "
        "negative prompt, clip skip, BREAK, prompt editing and AND, img2img, inpaint and "
        "upscale, ControlNet, embeddings, /train): tiny random FLUX.1 dev",
        "**tiny**, 64x64",
    ]

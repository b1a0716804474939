"""/png-info and /reproduce with real attachments (SimCord)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from engine.imaging.images import encode_png
from tests.conftest import wait_until
from tests.discord_helpers import has_result, original_edits

A1111_XL = (
    "a photo of an astronaut riding a horse on mars\n"
    "Negative prompt: blurry\n"
    "Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, Seed: 1234, "
    "Size: 64x64, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Denoising strength: 0.4, "
    "Hires upscale: 2, Version: v1.10.1"
)


def png_with(text: str) -> bytes:
    return encode_png(Image.new("RGB", (64, 64), "white"), text)


async def test_png_info_shows_the_parameters(sim):
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "png-info", image=("a1111.png", png_with(A1111_XL)))
    assert result.ephemeral
    [embed] = result.response.embeds
    fields = {f.name: f.value for f in embed.fields}
    assert embed.description == "a photo of an astronaut riding a horse on mars"
    assert fields["Negative"] == "blurry"
    assert fields["Sampler"] == "DPM++ 2M"
    assert fields["Schedule type"] == "Karras"


async def test_reproduce_a_posted_image_gives_identical_pixels(sim):
    alice = sim.member("alice")
    original = await alice.slash(
        sim.channel,
        "dream",
        prompt="a (red:1.3) fox BREAK snow",
        negative="blurry",
        seed=42,
        steps=3,
        cfg=6.0,
        sampler="DPM++ 2M",
        scheduler="Karras",
        variation_seed=7,
        variation_strength=0.3,
    )
    await wait_until(sim.env, lambda: has_result(original))
    posted = await original.response.attachments[0].read()
    again = await alice.slash(sim.channel, "reproduce", image=("posted.png", posted))
    await wait_until(sim.env, lambda: has_result(again))
    rerun = await again.response.attachments[0].read()
    first = np.asarray(Image.open(io.BytesIO(posted)))
    second = np.asarray(Image.open(io.BytesIO(rerun)))
    assert np.array_equal(first, second)


async def test_reproduce_says_what_it_could_not_honour(sim):
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "reproduce", image=("a1111.png", png_with(A1111_XL)))
    await wait_until(sim.env, lambda: has_result(result))
    queued = original_edits(sim.env, result)[0]["content"]
    assert "Model sd_xl_base_1.0 is not on this bot; used tiny." in queued
    assert "Not reproduced" not in queued  # the hires fix and its denoise run here too
    assert "Noise is drawn on the CPU here, not the GPU." in queued
    assert "DPM++ 2M Karras" in queued  # A1111 1.9's split sampler and schedule read as one


async def test_bad_attachments_get_a_clear_answer_and_no_job(sim):
    alice = sim.member("alice")
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    cases = [
        ("notes.png", b"this is not an image at all", "That file is not an image I can read."),
        ("truncated.png", png_with(A1111_XL)[:40], "That file is not an image I can read."),
        (
            "anim.gif",
            gif.getvalue(),
            "That is a GIF image; parameters live in PNG, JPEG or WebP files.",
        ),
        ("plain.png", _plain_png(), "That image carries no generation parameters."),
        (
            "huge.png",
            b"\x89PNG" + bytes(21 * 1024 * 1024),
            "That file is 21 MB; the limit is 20 MB.",
        ),
    ]
    for name, data, message in cases:
        info = await alice.slash(sim.channel, "png-info", image=(name, data))
        assert info.ephemeral
        # Deferred ephemerally, so the answer completes that (private) response.
        assert info.response.content == f"❌ {message}"
        again = await alice.slash(sim.channel, "reproduce", image=(name, data))
        await wait_until(sim.env, lambda again=again: any(m.ephemeral for m in again.followups))
        assert [m.content for m in again.followups if m.ephemeral] == [f"❌ {message}"]
    assert await sim.bot.scheduler.jobs.with_status(*__import__("data").JobStatus) == []


def _plain_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_an_unexpected_error_after_a_public_defer_is_told_privately(sim, monkeypatch):
    def broken(text):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(sim.bot.dreams, "reproduce_params", broken)
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "reproduce", image=("a.png", png_with(A1111_XL)))
    [error] = sim.expected_errors()
    assert "disk on fire" in str(error.__cause__ or error)
    private = [m.content for m in result.followups if m.ephemeral]
    assert private == ["Something went wrong; the bot's owner can see the log."]
    public = [m for m in sim.channel.history() if m.author.bot]
    assert public == [], "the public 'thinking' message is gone"

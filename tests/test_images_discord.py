"""/img2img, /inpaint, /outpaint, /upscale and ControlNet through SimCord (issue 5)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.generation.options import DreamOptions
from data.jobs import JobStatus
from engine.api.infotext import parse_infotext
from engine.imaging.images import encode_png, read_png_infotext
from engine.pipelines.tiny import save_tiny_controlnet
from tests.conftest import wait_until
from tests.discord_helpers import ephemeral_followups, has_result


@pytest.fixture(scope="session")
def tiny_canny(tmp_path_factory: pytest.TempPathFactory, tiny_sd1: Path) -> Path:
    return save_tiny_controlnet(tmp_path_factory.mktemp("models") / "tiny-canny", tiny_sd1)


@pytest.fixture
def settings(make_settings, tiny_sd1, tiny_canny):
    return make_settings(
        models={
            "tiny": {
                "source": str(tiny_sd1),
                "default_size": (64, 64),
                "max_pixels": 128 * 128,
                "controlnets": {"canny": str(tiny_canny)},
            }
        },
        max_attachment_bytes=200_000,
    )


def picture(size: tuple[int, int] = (64, 64), mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    return Image.fromarray(pixels, mode)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A few hundred bytes whose header claims `width`x`height` pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat_data = zlib.compress(b"\0" * 1024)
    idat = b"IDAT" + idat_data
    body = struct.pack(">I", len(idat_data)) + idat + struct.pack(">I", zlib.crc32(idat))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + ihdr + body + end


async def finished(sim: Any, result: Any) -> Any:
    await wait_until(sim.env, lambda: has_result(result) or ephemeral_followups(result))
    await sim.bot.scheduler.drain()
    assert has_result(result), ephemeral_followups(result)
    return result.response


async def first_image(message: Any) -> tuple[Image.Image, dict[str, str]]:
    data = await message.attachments[0].read()
    return Image.open(io.BytesIO(data)), parse_infotext(read_png_infotext(data)).values


def private_answer(result: Any) -> str:
    if result.ephemeral:
        return result.response.content
    return ephemeral_followups(result)[-1]


async def jobs_of(sim: Any) -> list[Any]:
    await sim.bot.scheduler.drain()
    return await sim.bot.scheduler.jobs.with_status(*JobStatus)


async def test_img2img_starts_from_the_picture_and_says_so_in_the_infotext(sim):
    alice = sim.member("alice")
    result = await alice.slash(
        sim.channel,
        "img2img",
        image=("cat.png", png(picture())),
        prompt="a cat",
        strength=0.5,
        steps=4,
        seed=3,
    )
    message = await finished(sim, result)
    image, values = await first_image(message)
    assert image.size == (64, 64)
    assert values["Denoising strength"] == "0.5"
    assert values["Seed"] == "3"
    [job] = await jobs_of(sim)
    assert job.kind == "img2img"
    assert job.params["mode"] == "img2img"
    # The input is kept by content with the job, not as the attachment's URL.
    assert sim.bot.images.inputs.get(job.params["init_image"]) == png(picture())
    assert "http" not in str(job.params)
    fields = {f.name: f.value for f in message.embeds[0].fields}
    assert fields["Denoising"] == "0.5"
    assert message.embeds[0].author.name.startswith("Image to image for")


async def test_img2img_resizes_to_what_the_model_works_with_and_says_so(sim):
    alice = sim.member("alice")
    result = await alice.slash(
        sim.channel,
        "img2img",
        image=("odd.png", png(picture((100, 75)))),
        prompt="a cat",
        steps=2,
    )
    message = await finished(sim, result)
    image, _ = await first_image(message)
    assert image.width % 8 == 0
    assert image.height % 8 == 0
    note = {f.name: f.value for f in message.embeds[0].fields}["Note"]
    assert note.startswith("Resized from 100x75 to ")


async def test_inpaint_with_a_mask_keeps_the_unmasked_pixels(sim):
    alice = sim.member("alice")
    original = picture()
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 24, 24))
    result = await alice.slash(
        sim.channel,
        "inpaint",
        image=("room.png", png(original)),
        mask=("mask.png", png(mask)),
        prompt="a window",
        steps=3,
        mask_blur=2,
    )
    message = await finished(sim, result)
    image, values = await first_image(message)
    assert values["Mask blur"] == "2"
    kept = np.asarray(image.convert("RGB"))[40:, 40:]
    assert np.array_equal(kept, np.asarray(original)[40:, 40:])


async def test_inpaint_reads_the_mask_from_transparency_or_refuses_without_it(sim):
    alice = sim.member("alice")
    rgba = picture(mode="RGBA")
    alpha = Image.new("L", (64, 64), 255)
    alpha.paste(0, (16, 16, 48, 48))
    rgba.putalpha(alpha)
    result = await alice.slash(
        sim.channel, "inpaint", image=("cut.png", png(rgba)), prompt="a hole", steps=2
    )
    await finished(sim, result)

    refused = await alice.slash(
        sim.channel, "inpaint", image=("flat.png", png(picture())), prompt="a hole", steps=2
    )
    assert private_answer(refused) == (
        "❌ Attach a mask, or an image with transparent pixels where it should change."
    )
    assert len(await jobs_of(sim)) == 1


async def test_outpaint_grows_the_canvas_and_keeps_the_picture(sim):
    alice = sim.member("alice")
    original = picture()
    result = await alice.slash(
        sim.channel,
        "outpaint",
        image=("p.png", png(original)),
        prompt="a wide field",
        right=32,
        steps=3,
    )
    message = await finished(sim, result)
    image, _ = await first_image(message)
    assert image.size == (96, 64)
    [job] = await jobs_of(sim)
    assert job.params["outpaint"] == [0, 32, 0, 0]


async def test_upscale_doubles_and_uses_the_prompt_the_picture_carries(sim):
    alice = sim.member("alice")
    made = encode_png(picture(), "a red barn\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 4")
    result = await alice.slash(sim.channel, "upscale", image=("barn.png", made), steps=4)
    message = await finished(sim, result)
    image, values = await first_image(message)
    assert image.size == (128, 128)
    assert "Denoising strength" in values
    [job] = await jobs_of(sim)
    assert job.params["prompt"] == "a red barn"
    assert job.params["mode"] == "upscale"


async def test_dream_with_a_control_image_uses_the_models_controlnet(sim):
    alice = sim.member("alice")
    result = await alice.slash(
        sim.channel,
        "dream",
        prompt="a house",
        control_image=("edges.png", png(picture())),
        steps=2,
    )
    message = await finished(sim, result)
    _, values = await first_image(message)
    assert "ControlNet 0" in values
    assert "canny" in values["ControlNet 0"]

    refused = await alice.slash(
        sim.channel,
        "dream",
        prompt="a house",
        control_image=("d.png", png(picture())),
        control_type="depth",
    )
    assert private_answer(refused) == "❌ Model tiny has no ControlNet for depth (it has: canny)."


GOOD = png(picture())
TRUNCATED = png(picture((128, 128)))[:3000]


@pytest.mark.parametrize(
    ("command", "files", "options", "expected"),
    [
        ("img2img", {"image": ("notes.png", b"just some text")}, {}, "not an image I can read"),
        ("img2img", {"image": ("cut.png", TRUNCATED)}, {}, "damaged or truncated"),
        ("img2img", {"image": ("bomb.png", bomb_png())}, {}, "too many pixels; the limit"),
        (
            "img2img",
            {"image": ("big.png", b"\0" * 300_000)},
            {},
            "is 293 KB; the limit is 195.3 KB",
        ),
        ("img2img", {"image": ("empty.png", b"")}, {}, "empty file"),
        (
            "inpaint",
            {"image": ("a.png", GOOD), "mask": ("m.png", png(Image.new("L", (64, 64), 0)))},
            {},
            "The mask is empty",
        ),
        (
            "inpaint",
            {"image": ("a.png", GOOD), "mask": ("m.png", png(Image.new("L", (64, 32), 255)))},
            {},
            "The mask is 64x32 but the image is 64x64",
        ),
        ("outpaint", {"image": ("a.png", GOOD)}, {}, "Say how far to grow the picture"),
        ("upscale", {"image": ("a.png", GOOD)}, {"factor": 4.0}, "the limit is"),
        ("dream", {"control_image": ("c.png", b"GIF89a")}, {}, "not an image I can read"),
        ("dream", {}, {"control_type": "canny"}, "needs a control image"),
    ],
)
async def test_bad_attachments_get_a_clear_private_answer_and_no_charge(
    sim, make_settings, command, files, options, expected
):
    if command == "upscale":
        sim.bot.settings.max_upscale_pixels = 128 * 128  # a 4x upscale of 64x64 is 256x256
    alice = sim.member("alice")
    prompt = {} if command == "upscale" else {"prompt": "a cat"}
    result = await alice.slash(sim.channel, command, **prompt, **files, **options)
    await wait_until(sim.env, lambda: result.ephemeral or ephemeral_followups(result))
    assert expected in private_answer(result)
    sim.expected_errors()
    assert await jobs_of(sim) == []
    assert (await sim.bot.dreams.credits.account(alice.id)).balance == sim.settings.starting_credits
    # and the bot goes on serving
    ok = await alice.slash(sim.channel, "img2img", image=("a.png", GOOD), prompt="ok", steps=1)
    await finished(sim, ok)


async def test_a_queued_img2img_job_survives_a_restart_with_its_input(sim):
    alice = sim.member("alice")
    dreams = sim.bot.dreams
    key = sim.bot.images.inputs.put(GOOD)
    params = dreams.build_params(
        DreamOptions("a cat", steps=2, size=(64, 64)),
        mode="img2img",
        init_image=key,
        denoise=0.5,
    )
    await dreams.jobs.create(
        kind="img2img",
        user_id=alice.id,
        guild_id=sim.guild.id,
        channel_id=sim.channel.id,
        interaction_id=None,
        params=params.to_dict(),
        cost=1,
    )
    await sim.restart()

    def posted() -> bool:
        return any(m.attachments for m in sim.channel.history())

    await wait_until(sim.env, posted)
    [job] = await jobs_of(sim)
    assert job.status is JobStatus.SUCCEEDED

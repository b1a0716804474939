"""Midjourney's zoom out, pan and make square under a single result (issue 18), through
SimCord: a click, a reply whose picture is the old one shrunk into a larger canvas with the
border painted, charged to whoever pressed and queued like any job."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from engine.api.infotext import params_from_infotext
from engine.imaging import attachments
from engine.imaging.images import read_png_infotext
from tests.conftest import wait_until
from tests.discord_helpers import has_result

CAP = 128 * 128  # the tiny model's max_pixels in tests/conftest.py


async def dream(sim: Any, member: Any, **options: Any) -> Any:
    result = await member.slash(
        sim.channel, "dream", **{"prompt": "a cat", "steps": 2, "size": "128x128", **options}
    )
    await wait_until(sim.env, lambda: has_result(result))
    await sim.bot.scheduler.drain()
    return result.response


def job_of(message: Any) -> int:
    return int(message.embeds[0].footer.text.split()[1])


def replies(sim: Any, message: Any) -> list[Any]:
    return [
        m
        for m in sim.channel.history()
        if m.reference is not None and m.reference.message_id == message.id and m.embeds
    ]


async def reframed(sim: Any, member: Any, message: Any, name: str) -> Any:
    """Press the reframe button `name` under `message`; its finished reply."""
    click = await member.click(message, custom_id=f"sd:{name}:{job_of(message)}:0")
    assert click.response.content.startswith("Queued as job "), click.response.content
    job = int(click.response.content.split()[3].rstrip(","))
    await wait_until(sim.env, lambda: any(job_of(m) == job for m in replies(sim, message)))
    await sim.bot.scheduler.drain()
    [reply] = [m for m in replies(sim, message) if job_of(m) == job]
    return reply


async def picture(message: Any) -> tuple[Image.Image, str]:
    data = await message.attachments[0].read()
    return Image.open(io.BytesIO(data)), read_png_infotext(data)


def custom_ids(message: Any) -> list[str]:
    """Every button's custom id (SimCord's payloads or discord.py's components)."""
    found = []
    for row in message.components:
        children = row["components"] if isinstance(row, dict) else row.children
        found += [c["custom_id"] if isinstance(c, dict) else c.custom_id for c in children]
    return found


async def test_a_single_result_offers_zoom_pan_and_square_a_grid_does_not(sim):
    alice = sim.member("alice")
    single = await dream(sim, alice, size="64x128")
    job = job_of(single)
    ids = custom_ids(single)
    for name in ("zoom2", "zoom15", "square", "panleft", "panright", "panup", "pandown"):
        assert f"sd:{name}:{job}:0" in ids
    square = await dream(sim, alice)
    assert f"sd:square:{job_of(square)}:0" not in custom_ids(square), "square already"
    grid = await dream(sim, alice, count=2, size="64x64")
    assert not [i for i in custom_ids(grid) if i.split(":")[1].startswith(("zoom", "pan"))]


async def test_zoom_out_2x_keeps_the_size_and_shrinks_the_old_picture_into_the_middle(sim):
    alice = sim.member("alice")
    message = await dream(sim, alice, seed=5)
    before = (await sim.bot.dreams.credits.account(alice.id)).balance

    reply = await reframed(sim, alice, message, "zoom2")

    image, infotext = await picture(reply)
    assert image.size == (128, 128), "zooming out keeps the resolution, so it can repeat"
    params = params_from_infotext(infotext)
    assert params.prompt == "a cat"
    assert reply.content == f"Zoom out 2x for {alice.mention}"
    job = await sim.bot.scheduler.jobs.get(job_of(reply))
    assert (job.parent_id, job.action) == (job_of(message), "zoom2")
    stored = job.params
    assert (stored["mode"], tuple(stored["outpaint"])) == ("outpaint", (32, 32, 32, 32))
    assert (await sim.bot.dreams.credits.account(alice.id)).balance < before, "charged"


async def test_pan_left_widens_the_canvas_and_make_square_squares_it(sim):
    alice = sim.member("alice")
    tall = await dream(sim, alice, size="64x128")
    panned, _ = await picture(await reframed(sim, alice, tall, "panleft"))
    assert panned.size == (96, 128)
    squared, _ = await picture(await reframed(sim, alice, tall, "square"))
    assert squared.size == (128, 128)


async def test_someone_else_may_not_reframe_unless_the_server_lets_them(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    message = await dream(sim, alice)
    click = await bob.click(message, custom_id=f"sd:zoom2:{job_of(message)}:0")
    assert click.response.content == f"❌ Only <@{alice.id}> can use the buttons of this result."
    assert not replies(sim, message)


async def test_a_pan_past_the_longest_picture_allowed_is_refused_clearly(sim):
    alice = sim.member("alice")
    message = await dream(sim, alice, size="64x128")
    job = await sim.bot.scheduler.jobs.get(job_of(message))
    # A strip already 8:1 (as repeated pans make one): one more pan would be longer still.
    async with sim.bot.store.transaction() as db:
        await db.execute("UPDATE images SET width = 512, height = 64 WHERE job_id = ?", (job.id,))
    click = await alice.click(message, custom_id=f"sd:panright:{job.id}:0")
    assert "too long and thin" in click.response.content
    assert not replies(sim, message)


@pytest.mark.parametrize(
    ("size", "factor", "inner", "canvas"),
    [
        ((512, 512), 2.0, (256, 256), (512, 512)),
        ((512, 768), 1.5, (344, 512), (512, 768)),  # 341.3 to the nearest multiple of 8
        # Over the model's size (an upscale): the canvas is the largest the model takes.
        ((1024, 1024), 2.0, (256, 256), (512, 512)),
    ],
)
def test_zoom_out_geometry(size, factor, inner, canvas):
    frame = attachments.zoom_out(*size, factor, 512 * 768 if size[1] == 768 else 512 * 512)
    assert frame.inner == inner
    assert frame.canvas == canvas


def test_pan_and_square_geometry():
    assert attachments.pan(512, 512, "up", 1536 * 1536).canvas == (512, 768)
    assert attachments.pan(512, 512, "left", 512 * 512).canvas[0] <= 640
    assert attachments.make_square(512, 768, 768 * 768).canvas == (768, 768)
    with pytest.raises(attachments.InvalidParams, match="square already"):
        attachments.make_square(512, 512, CAP)
    with pytest.raises(attachments.InvalidParams, match="choose one of"):
        attachments.pan(512, 512, "sideways", CAP)


async def test_custom_zoom_asks_the_factor_and_the_prompt(sim):
    alice = sim.member("alice")
    message = await dream(sim, alice)
    shown = await alice.click(message, label="Custom zoom")
    assert shown.modal is not None
    submitted = await alice.submit_modal(shown, {"zoom": "1.5x", "prompt": "a cat in a garden"})
    assert submitted.response.content.startswith("Queued as job "), submitted.response.content
    job = int(submitted.response.content.split()[3].rstrip(","))
    await wait_until(sim.env, lambda: any(job_of(m) == job for m in replies(sim, message)))
    await sim.bot.scheduler.drain()
    [reply] = [m for m in replies(sim, message) if job_of(m) == job]
    image, infotext = await picture(reply)
    assert image.size == (128, 128)
    assert params_from_infotext(infotext).prompt == "a cat in a garden"
    stored = (await sim.bot.scheduler.jobs.get(job)).params
    inner = 128 - sum(stored["outpaint"][:2])
    assert inner == 88, "128 / 1.5 = 85.3, to the nearest multiple of 8"


@pytest.mark.parametrize("typed", ["3", "1", "0.5", "nan", "inf", "lots", "1e308"])
async def test_a_custom_zoom_out_of_range_is_refused_and_charges_nothing(sim, typed):
    alice = sim.member("alice")
    message = await dream(sim, alice)
    before = (await sim.bot.dreams.credits.account(alice.id)).balance
    shown = await alice.click(message, label="Custom zoom")
    submitted = await alice.submit_modal(shown, {"zoom": typed, "prompt": "a cat"})
    assert submitted.response.content.startswith("❌ Zoom "), submitted.response.content
    assert "1.5" in submitted.response.content
    assert (await sim.bot.dreams.credits.account(alice.id)).balance == before
    assert not replies(sim, message)

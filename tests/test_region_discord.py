"""Vary (Region) through SimCord (issue 18): a click under a single result, a modal that asks
what to change and where in words, and a reply in which only that region was repainted,
charged to whoever pressed; or the mask shown first, with Run (charged then, even after a
restart) and Cancel (nothing charged)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.api.infotext import parse_infotext
from engine.imaging import masks
from engine.imaging.images import read_png_infotext
from engine.pipelines.segment import load_segmenter
from engine.pipelines.tiny_segmenter import save_tiny_segmenter
from tests.conftest import wait_until
from tests.discord_helpers import has_result

NOT_SET_UP = "❌ Region edits are not set up here: this bot has no segmentation model."


@pytest.fixture(scope="session")
def clipseg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_segmenter(tmp_path_factory.mktemp("models") / "tiny-clipseg")


@pytest.fixture
def settings(make_settings: Any, clipseg: Path) -> Any:
    """The bot with a segmenter (SDBOT_SEGMENTER pointing at the tiny CLIPSeg's folder)."""
    return make_settings(segmenter=str(clipseg))


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


def answer(result: Any) -> str:
    return ([m.content for m in result.followups] or [result.response.content])[-1]


async def balance(sim: Any, member: Any) -> int:
    return (await sim.bot.dreams.credits.account(member.id)).balance


async def ask_region(sim: Any, member: Any, message: Any, **values: Any) -> Any:
    """Click Vary (Region) under `message` and submit its modal with `values`."""
    shown = await member.click(message, label="Vary (Region)")
    assert shown.modal is not None, answer(shown)
    return await member.submit_modal(shown, values)


async def reply_for(sim: Any, message: Any, answered: Any) -> Any:
    """The finished reply to `message` of the job an acknowledgement names."""
    text = answer(answered)
    assert " as job " in text, text
    job = int(text.split(" as job ")[1].split(",")[0])
    await wait_until(sim.env, lambda: any(job_of(m) == job for m in replies(sim, message)))
    await sim.bot.scheduler.drain()
    [reply] = [m for m in replies(sim, message) if job_of(m) == job]
    return reply


async def pixels(message: Any) -> tuple[np.ndarray, str]:
    """A reply's picture and its infotext."""
    data = await message.attachments[0].read()
    infotext = read_png_infotext(data)
    assert infotext is not None
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int), infotext


def shown_through(clipseg: Path, picture: np.ndarray, words: str, blur: int = 4) -> Image.Image:
    """What an inpaint of `words` shows of its painting over `picture`: the mask the engine
    makes, blurred as the job blurs it (computed here with the same model and code)."""
    segmenter = load_segmenter(str(clipseg), torch.device("cpu"), torch.float32)
    image = Image.fromarray(picture.astype(np.uint8))
    with torch.inference_mode():
        mask = masks.region_mask(image.size, segmenter.probabilities(image, words), None)
    assert mask is not None
    return masks.overlay_mask(masks.blur_mask(mask, blur))


def repainted_area(clipseg: Path, picture: np.ndarray, words: str) -> np.ndarray:
    """Where an inpaint of `words` may change `picture`."""
    return np.asarray(shown_through(clipseg, picture, words)) > 0


async def test_vary_region_repaints_only_what_the_words_name_charged_to_the_presser(sim, clipseg):
    alice = sim.member("alice")
    message = await dream(sim, alice, seed=11)
    before_pixels, _ = await pixels(message)
    before = await balance(sim, alice)

    shown = await alice.click(message, label="Vary (Region)")
    assert shown.modal is not None
    fields = {c["custom_id"]: c for c in _inputs(shown.modal)}
    assert fields["prompt"]["value"] == "a cat", "prefilled with the job's prompt"
    submitted = await alice.submit_modal(shown, {"region": "the sky", "prompt": "a red sky"})
    assert answer(submitted).startswith("Queued as job "), answer(submitted)
    reply = await reply_for(sim, message, submitted)

    after_pixels, infotext = await pixels(reply)
    assert after_pixels.shape == before_pixels.shape
    area = repainted_area(clipseg, before_pixels, "the sky")
    assert 0 < area.mean() < 1
    np.testing.assert_array_equal(after_pixels[~area], before_pixels[~area])
    assert (after_pixels[area] != before_pixels[area]).any(), "the region was repainted"
    assert reply.content == f"Vary (Region) for {alice.mention}"
    fields = {field.name: field.value for field in reply.embeds[0].fields}
    assert fields["Region"] == '"the sky"'
    values = parse_infotext(infotext).values
    assert values["Mask prompt"] == "the sky"
    assert parse_infotext(infotext).prompt == "a red sky"
    job = await sim.bot.scheduler.jobs.get(job_of(reply))
    assert (job.parent_id, job.action, job.user_id) == (job_of(message), "region", alice.id)
    assert (job.params["mode"], job.params["mask_prompt"], job.params["mask_image"]) == (
        "inpaint",
        "the sky",
        None,
    )
    assert await balance(sim, alice) == before - job.cost
    assert job.cost > 0


async def test_a_grid_cell_alone_repaints_that_cell_and_words_stay_inside_it(sim, clipseg):
    alice = sim.member("alice")
    message = await dream(sim, alice, seed=12)
    before, _ = await pixels(message)
    submitted = await ask_region(sim, alice, message, cell="top left", prompt="a bird")
    after, infotext = await pixels(await reply_for(sim, message, submitted))
    assert parse_infotext(infotext).values["Mask cell"] == "top-left"
    # The top-left third, softened by the job's mask blur (4) just past its edge.
    np.testing.assert_array_equal(after[:, 60:], before[:, 60:])
    np.testing.assert_array_equal(after[60:], before[60:])
    assert (after[:40, :40] != before[:40, :40]).any()

    both = await ask_region(sim, alice, message, region="the sky", cell="9", prompt="a bird")
    after, infotext = await pixels(await reply_for(sim, message, both))
    values = parse_infotext(infotext).values
    assert (values["Mask prompt"], values["Mask cell"]) == ("the sky", "bottom-right")
    np.testing.assert_array_equal(after[:70], before[:70])
    np.testing.assert_array_equal(after[:, :70], before[:, :70])


async def test_the_mask_first_then_run_after_a_restart_charges_only_the_run(sim, clipseg):
    alice = sim.member("alice")
    message = await dream(sim, alice, seed=13)
    original, _ = await pixels(message)
    before = await balance(sim, alice)

    asked = await ask_region(
        sim, alice, message, region="the sky", prompt="a red sky", preview=True
    )
    assert answer(asked).startswith("Mask preview queued as job "), answer(asked)
    assert "nothing is charged unless you press Run" in answer(asked)
    preview = await reply_for(sim, message, asked)
    assert preview.content.startswith(f"Mask preview for {alice.mention}")
    assert labels(preview) == ["Run", "Cancel"]
    shown, _ = await pixels(preview)
    overlay = shown_through(clipseg, original, "the sky")
    expected = masks.preview_overlay(Image.fromarray(original.astype(np.uint8)), overlay)
    np.testing.assert_array_equal(shown, np.asarray(expected), "the region tinted, the rest dim")
    area = np.asarray(overlay) > 0
    preview_job = await sim.bot.scheduler.jobs.get(job_of(preview))
    assert (preview_job.cost, preview_job.kind) == (0, "mask")
    assert await balance(sim, alice) == before, "a preview is free"

    await sim.restart()
    ran = await alice.click(preview, label="Run")
    assert answer(ran).startswith("Queued as job "), answer(ran)
    painted = await reply_for(sim, preview, ran)
    after, infotext = await pixels(painted)
    np.testing.assert_array_equal(after[~area], original[~area])
    assert (after[area] != original[area]).any()
    assert parse_infotext(infotext).values["Mask prompt"] == "the sky"
    job = await sim.bot.scheduler.jobs.get(job_of(painted))
    assert (job.parent_id, job.action, job.params["mask_preview"]) == (
        preview_job.id,
        "regionrun",
        False,
    )
    assert await balance(sim, alice) == before - job.cost


async def test_cancel_under_a_preview_removes_it_and_charges_nothing(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    message = await dream(sim, alice)
    before = await balance(sim, alice)
    asked = await ask_region(sim, alice, message, region="the sky", prompt="x", preview=True)
    preview = await reply_for(sim, message, asked)
    refused = await bob.click(preview, label="Run")
    assert answer(refused) == f"❌ Only {alice.mention} can use the buttons of this result."
    cancelled = await alice.click(preview, label="Cancel")
    assert answer(cancelled) == "Cancelled: nothing was painted or charged."
    assert preview.id not in [m.id for m in sim.channel.history()]
    assert await balance(sim, alice) == before
    assert (await sim.bot.scheduler.jobs.get(job_of(preview))).deleted_at is not None


async def test_where_anyone_may_press_the_presser_pays_for_the_region(sim, make_settings, clipseg):
    sim.settings = make_settings(segmenter=str(clipseg), buttons_for_anyone=True)
    await sim.restart()
    alice, bob = sim.member("alice"), sim.member("bob")
    message = await dream(sim, alice)
    alice_before, bob_before = await balance(sim, alice), await balance(sim, bob)
    submitted = await ask_region(sim, bob, message, region="the sky", prompt="a red sky")
    reply = await reply_for(sim, message, submitted)
    job = await sim.bot.scheduler.jobs.get(job_of(reply))
    assert job.user_id == bob.id
    assert await balance(sim, bob) == bob_before - job.cost
    assert await balance(sim, alice) == alice_before


async def test_someone_else_may_not_vary_a_region_of_your_result(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    message = await dream(sim, alice)
    refused = await bob.click(message, label="Vary (Region)")
    assert refused.modal is None
    assert answer(refused) == f"❌ Only {alice.mention} can use the buttons of this result."
    assert not replies(sim, message)


@pytest.mark.parametrize(
    ("values", "told"),
    [
        (
            {"region": "   ", "prompt": "a cat"},
            '❌ Say what to change: a few words such as "the sky", or a grid cell such as '
            "top-left.",
        ),
        (
            {"cell": "upper middle", "prompt": "a cat"},
            "❌ Grid cell 'upper middle' is not one of: top-left, top, top-right, left, center, "
            "right, bottom-left, bottom, bottom-right (or 1-9, in reading order).",
        ),
        (
            {"region": "the sky", "prompt": "x" * 1600},
            "❌ The prompt is 1600 characters; the limit is 1500.",
        ),
        ({"region": "the sky", "prompt": "  "}, "❌ The prompt is empty."),
    ],
)
async def test_bad_region_requests_are_told_and_change_nothing(sim, values, told):
    alice = sim.member("alice")
    message = await dream(sim, alice)
    before = await balance(sim, alice)
    jobs = len(await sim.bot.scheduler.jobs.pending_for(alice.id))
    submitted = await ask_region(sim, alice, message, **values)
    assert answer(submitted) == told
    assert await balance(sim, alice) == before
    assert len(await sim.bot.scheduler.jobs.pending_for(alice.id)) == jobs
    assert not replies(sim, message)


async def test_words_that_match_nothing_fail_the_job_and_refund_it(sim, make_settings, tmp_path):
    blind = save_tiny_segmenter(tmp_path / "blind-clipseg", blind=True)
    sim.settings = make_settings(segmenter=str(blind))
    await sim.restart()
    alice = sim.member("alice")
    message = await dream(sim, alice)
    before = await balance(sim, alice)
    submitted = await ask_region(sim, alice, message, region="the sky", prompt="a red sky")
    assert answer(submitted).startswith("Queued as job ")
    await wait_until(sim.env, lambda: "matches nothing" in answer(submitted))
    await sim.bot.scheduler.drain()
    assert answer(submitted).endswith(
        ': ❌ The region "the sky" matches nothing in the picture: describe it another way, '
        "or choose a grid cell. Your 1 credit was refunded."
    ), answer(submitted)
    assert await balance(sim, alice) == before
    assert not replies(sim, message)


async def test_without_a_segmenter_there_is_no_button_and_an_old_one_says_so(sim, make_settings):
    alice = sim.member("alice")
    message = await dream(sim, alice)
    sim.settings = make_settings()  # SDBOT_SEGMENTER emptied, the bot restarted
    await sim.restart()
    before = await balance(sim, alice)
    clicked = await alice.click(message, label="Vary (Region)")
    assert clicked.modal is None
    assert answer(clicked) == NOT_SET_UP
    assert await balance(sim, alice) == before
    fresh = await dream(sim, alice)
    assert "Vary (Region)" not in labels(fresh)
    assert "Vary (Region)" in labels(message), "the old result kept its button"


def labels(message: Any) -> list[str | None]:
    """Every button's label (SimCord's payloads or discord.py's components)."""
    found = []
    for row in message.components:
        children = row["components"] if isinstance(row, dict) else row.children
        found += [c.get("label") if isinstance(c, dict) else c.label for c in children]
    return found


def _inputs(modal: Any) -> list[dict[str, Any]]:
    """Every text input of a modal payload, inside action rows or labels."""
    found = []
    for row in modal["components"]:
        for child in row.get("components", [row.get("component")]):
            if child and child.get("type") == 4:
                found.append(child)
    return found

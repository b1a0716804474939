"""/edit through SimCord (issue 18): a member's picture changed by plain words with a tiny
random InstructPix2Pix model, posted with the usual buttons, priced and charged; bad input
and a bot without an edit model answered in one sentence, nothing charged."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.generation.options import DreamOptions, price_units
from data.jobs import JobStatus
from engine.api.edits import NOT_SET_UP
from engine.api.params import GenerationParams, InvalidParams
from tests.conftest import wait_until
from tests.discord_helpers import ephemeral_followups, has_result, original_edits
from tests.test_images_discord import finished, first_image, picture, png, private_answer

TINY_MODEL = {"default_size": (64, 64), "max_pixels": 128 * 128}


@pytest.fixture
def settings(request: Any, make_settings: Any, tiny_sd1: Path, tiny_pix2pix: Path) -> Any:
    """Two models: the default cannot edit; the second has an InstructPix2Pix UNet (unless a
    test asks for a bot "without an editor")."""
    models: dict[str, Any] = {"tiny": {"source": str(tiny_sd1), **TINY_MODEL}}
    if getattr(request, "param", "") != "without an editor":
        models["editor"] = {
            "source": str(tiny_sd1),
            "edit_source": str(tiny_pix2pix),
            **TINY_MODEL,
        }
    return make_settings(models=models, max_attachment_bytes=200_000, buttons_for_anyone=True)


async def jobs_of(sim: Any) -> list[Any]:
    await sim.bot.scheduler.drain()
    return await sim.bot.scheduler.jobs.with_status(*JobStatus)


async def balance(sim: Any, member: Any) -> int:
    return (await sim.bot.dreams.credits.account(member.id)).balance


def params_of(job: Any) -> GenerationParams:
    return GenerationParams.from_dict(job.params)


def stored_inputs(sim: Any) -> list[Path]:
    return [path for path in sim.bot.images.inputs.folder.rglob("*") if path.is_file()]


def rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def labels(message: Any) -> list[str]:
    """Every button's label (SimCord's payloads or discord.py's components)."""
    found = []
    for row in message.components:
        children = row["components"] if isinstance(row, dict) else row.children
        found += [c.get("label") if isinstance(c, dict) else c.label for c in children]
    return [label for label in found if label]


def answer(result: Any) -> str:
    return ([m.content for m in result.followups] or [result.response.content])[-1]


def job_of(message: Any) -> int:
    return int(message.embeds[0].footer.text.split()[1])


async def reply_for(sim: Any, message: Any, answered: Any) -> Any:
    """The finished reply to `message` of the job a button's acknowledgement names."""
    text = answer(answered)
    assert " as job " in text, text
    job = int(text.split(" as job ")[1].split(",")[0])

    def replies() -> list[Any]:
        return [
            m
            for m in sim.channel.history()
            if m.reference is not None and m.reference.message_id == message.id and m.embeds
        ]

    await wait_until(sim.env, lambda: any(job_of(m) == job for m in replies()))
    await sim.bot.scheduler.drain()
    [reply] = [m for m in replies() if job_of(m) == job]
    return reply


async def edit(sim: Any, member: Any, **options: Any) -> Any:
    values = {"image": ("cat.png", png(picture())), "instruction": "make it winter", "steps": 3}
    return await member.slash(sim.channel, "edit", **{**values, **options})


async def test_edit_changes_the_picture_and_posts_it_with_the_usual_buttons(sim):
    alice = sim.member("alice")
    before = await balance(sim, alice)
    message = await finished(sim, await edit(sim, alice, seed=3, image_cfg=1.25))
    image, values = await first_image(message)
    assert image.size == (64, 64)
    assert not np.array_equal(np.asarray(image.convert("RGB")), np.asarray(picture()))
    assert values["Image CFG scale"] == "1.25"
    assert values["Denoising strength"] == "1"
    assert values["Seed"] == "3"
    assert values["Model"] == "tiny-sd1"  # the checkpoint's name, as A1111 writes it
    [job] = await jobs_of(sim)
    assert (job.kind, job.params["mode"], job.params["model"]) == ("edit", "edit", "editor")
    assert job.params["prompt"] == "make it winter"
    # The picture is kept by content with the job, never as the attachment's URL.
    assert sim.bot.images.inputs.get(job.params["init_image"]) == png(picture())
    assert "http" not in str(job.params)
    assert message.embeds[0].author.name == "Edit for alice"
    assert message.embeds[0].description == "make it winter"
    fields = {f.name: f.value for f in message.embeds[0].fields}
    assert fields["Image CFG"] == "1.25"
    assert "Denoising" not in fields
    assert {"Upscale", "Vary (subtle)", "Vary (strong)", "Reroll", "Info", "Edit"} <= set(
        labels(message)
    )
    # Every step runs, from noise, as img2img at full strength; each runs three UNet rows
    # against CFG's two, so it is half as dear again.
    price = sim.bot.dreams.price(params_of(job))
    as_img2img = price_units(replace(params_of(job), mode="img2img", denoise=1.0))
    assert price_units(params_of(job)) == pytest.approx(1.5 * as_img2img)
    assert job.cost == price
    assert await balance(sim, alice) == before - price


async def test_a_second_member_rerolls_an_edit_on_the_same_picture_and_pays_for_it(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    message = await finished(sim, await edit(sim, alice, seed=5))
    [first] = await jobs_of(sim)
    alice_paid, bob_before = await balance(sim, alice), await balance(sim, bob)

    clicked = await bob.click(message, label="Reroll")
    reply = await reply_for(sim, message, clicked)
    job = await sim.bot.scheduler.jobs.get(job_of(reply))
    assert (job.parent_id, job.action, job.user_id) == (first.id, "reroll", bob.id)
    assert job.params["mode"] == "edit"
    assert job.params["init_image"] == first.params["init_image"]
    assert job.params["prompt"] == "make it winter"
    assert job.params["seed"] != 5
    assert {"Reroll", "Vary (subtle)"} <= set(labels(reply))
    assert await balance(sim, alice) == alice_paid
    assert await balance(sim, bob) == bob_before - job.cost

    # A subtle variation of an edit: the same seed's noise with another blended in.
    varied = await reply_for(sim, reply, await bob.click(reply, label="Vary (subtle)"))
    _, values = await first_image(varied)
    assert values["Seed"] == str(job.params["seed"])
    assert "Variation seed" in values
    assert values["Image CFG scale"] == "1.5"


async def test_the_edit_button_runs_another_instruction_on_the_same_picture(sim):
    alice = sim.member("alice")
    message = await finished(sim, await edit(sim, alice, seed=8))
    [first] = await jobs_of(sim)
    shown = await alice.click(message, label="Edit")
    assert shown.modal is not None
    submitted = await alice.submit_modal(shown, {"prompt": "make it night", "negative": ""})
    reply = await reply_for(sim, message, submitted)
    _, values = await first_image(reply)
    assert values["Seed"] == "8"
    assert values["Image CFG scale"] == "1.5"
    job = await sim.bot.scheduler.jobs.get(job_of(reply))
    assert (job.params["mode"], job.params["prompt"]) == ("edit", "make it night")
    assert job.params["init_image"] == first.params["init_image"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"image": ("notes.png", b"just some text")}, "not an image I can read"),
        ({"image": ("big.png", b"\0" * 300_000)}, "is 293 KB; the limit is 195.3 KB"),
        ({"image": ("empty.png", b"")}, "empty file"),
        ({"instruction": "   "}, "Say what to change, for example: make it winter."),
        ({"instruction": "[a cat:a tiger:0.5]"}, "Prompt editing [from:to:when]"),
    ],
)
async def test_bad_input_gets_one_sentence_and_changes_nothing(sim, options, expected):
    alice = sim.member("alice")
    result = await edit(sim, alice, **options)
    await wait_until(sim.env, lambda: result.ephemeral or ephemeral_followups(result))
    assert expected in private_answer(result)
    sim.expected_errors()
    assert await jobs_of(sim) == []
    assert stored_inputs(sim) == []
    assert await balance(sim, alice) == sim.settings.starting_credits
    # and the bot goes on serving
    await finished(sim, await edit(sim, alice, steps=1))


@pytest.mark.parametrize("image_cfg", [3.5, -1.0])
async def test_an_image_cfg_out_of_range_never_reaches_a_job(sim, image_cfg):
    import simcord

    alice = sim.member("alice")
    # Discord holds the member to the option's range and says so itself ...
    with pytest.raises(simcord.OptionError, match="image_cfg"):
        await edit(sim, alice, image_cfg=image_cfg)
    # ... and a crafted request that goes around it gets the bot's sentence, before the
    # picture is downloaded.
    with pytest.raises(InvalidParams) as refused:
        sim.bot.images.check_edit("make it winter", image_cfg)
    assert str(refused.value) == f"Image CFG scale must be 0-3, not {image_cfg:g}."
    assert await jobs_of(sim) == []
    assert await balance(sim, alice) == sim.settings.starting_credits


@pytest.mark.parametrize("settings", ["without an editor"], indirect=True)
async def test_a_bot_without_an_edit_model_says_so_in_one_sentence(sim):
    alice = sim.member("alice")
    result = await edit(sim, alice)
    assert result.ephemeral
    assert result.response.content == NOT_SET_UP
    sim.expected_errors()
    assert await jobs_of(sim) == []
    assert stored_inputs(sim) == []
    assert await balance(sim, alice) == sim.settings.starting_credits


async def test_a_queued_edit_survives_a_restart_with_its_picture(sim):
    alice = sim.member("alice")
    options = DreamOptions("make it winter", seed=6, steps=2)
    prepared = await sim.bot.images.edit(options, png(picture()))
    await sim.bot.dreams.jobs.create(
        kind="edit",
        user_id=alice.id,
        guild_id=sim.guild.id,
        channel_id=sim.channel.id,
        interaction_id=None,
        params=prepared.params.to_dict(),
        cost=1,
    )
    await sim.restart()

    def posted() -> list[Any]:
        return [m for m in sim.channel.history() if m.attachments]

    await wait_until(sim.env, lambda: bool(posted()))
    [job] = await jobs_of(sim)
    assert job.status is JobStatus.SUCCEEDED
    [message] = posted()
    _, values = await first_image(message)
    assert (values["Seed"], values["Image CFG scale"]) == ("6", "1.5")
    assert "Reroll" in labels(message)


async def test_change_by_words_under_a_result_edits_that_picture(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    made = await alice.slash(sim.channel, "dream", prompt="a cat", steps=2, seed=4)
    message = await finished(sim, made)
    [dreamed] = await jobs_of(sim)
    assert "Change by words" in labels(message)
    bob_before = await balance(sim, bob)

    shown = await bob.click(message, label="Change by words")
    assert shown.modal is not None
    refused = await bob.submit_modal(shown, {"instruction": "   "})
    assert answer(refused) == "❌ Say what to change, for example: make it winter."
    assert len(await jobs_of(sim)) == 1

    shown = await bob.click(message, label="Change by words")
    submitted = await bob.submit_modal(shown, {"instruction": "make it winter"})
    reply = await reply_for(sim, message, submitted)
    assert reply.embeds[0].author.name.startswith("Edit (change by words of job")
    job = await sim.bot.scheduler.jobs.get(job_of(reply))
    assert (job.parent_id, job.action, job.user_id) == (dreamed.id, "instruct", bob.id)
    assert (job.params["mode"], job.params["model"]) == ("edit", "editor")
    assert (job.params["prompt"], job.params["image_cfg"]) == ("make it winter", 1.5)
    # It starts from the result's own picture.
    picture_in = sim.bot.images.inputs.get(job.params["init_image"])
    assert rgb(picture_in).tolist() == rgb(await message.attachments[0].read()).tolist()
    assert await balance(sim, bob) == bob_before - job.cost
    assert "Change by words" in labels(reply)


@pytest.mark.parametrize("settings", ["without an editor"], indirect=True)
async def test_no_change_by_words_where_no_model_can_edit(sim):
    alice = sim.member("alice")
    message = await finished(sim, await alice.slash(sim.channel, "dream", prompt="a cat", steps=1))
    assert "Change by words" not in labels(message)
    assert "Reroll" in labels(message)


async def test_reproduce_of_an_edit_runs_its_instruction_and_says_the_picture_is_not_there(sim):
    alice = sim.member("alice")
    message = await finished(sim, await edit(sim, alice, seed=2))
    posted = await message.attachments[0].read()
    again = await alice.slash(sim.channel, "reproduce", image=("edited.png", posted))
    await wait_until(sim.env, lambda: has_result(again))
    queued = original_edits(sim.env, again)[0]["content"]
    assert "The picture it edited is not in its parameters" in queued
    assert "Not reproduced: Image CFG scale, Denoising strength." in queued
    await sim.bot.scheduler.drain()
    rerun = await sim.bot.scheduler.jobs.get(job_of(again.response))
    assert (rerun.params["mode"], rerun.params["prompt"]) == ("txt2img", "make it winter")

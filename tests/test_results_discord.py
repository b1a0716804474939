"""The buttons and reactions under a result (issue 4), through SimCord."""

from __future__ import annotations

import io
import shutil
import threading
from dataclasses import replace
from typing import Any

import discord
import pytest
from PIL import Image

import engine.pipelines.batches
from bot.generation.actions import Action
from bot.jobs.contracts import JobRefused
from data.jobs import JobStatus
from engine.api.infotext import params_from_infotext
from engine.api.jobs import EngineJob
from engine.imaging.images import read_png_infotext
from tests.conftest import wait_until
from tests.discord_helpers import has_result


async def dream(sim: Any, member: Any, **options: Any) -> Any:
    """A finished /dream; returns its result message."""
    result = await member.slash(sim.channel, "dream", **{"prompt": "a cat", "steps": 2, **options})
    await wait_until(sim.env, lambda: has_result(result))
    await sim.bot.scheduler.drain()
    return result.response


def admin(sim: Any, name: str = "admin") -> Any:
    role = sim.guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    return sim.guild.add_member(sim.env.create_user(name), roles=[role])


def job_id_of(message: Any) -> int:
    return int(message.embeds[0].footer.text.split()[1])


def buttons(message: Any) -> list[list[tuple[str, str]]]:
    """(label, custom_id) of every button, row by row (SimCord's payloads or discord.py's)."""
    rows = []
    for row in message.components:
        if isinstance(row, discord.ActionRow):
            rows.append([(c.label, c.custom_id) for c in row.children])
        else:
            rows.append([(c["label"], c["custom_id"]) for c in row["components"]])
    return rows


def replies_to(sim: Any, message: Any) -> list[Any]:
    return [
        m
        for m in sim.channel.history()
        if m.reference is not None and m.reference.message_id == message.id
    ]


async def reply_result(sim: Any, message: Any, count: int = 1) -> list[Any]:
    """Wait for `count` replies to `message` that carry a result."""

    def done() -> bool:
        return len([m for m in replies_to(sim, message) if m.embeds]) >= count

    await wait_until(sim.env, done)
    await sim.bot.scheduler.drain()
    return [m for m in replies_to(sim, message) if m.embeds]


def answer(result: Any) -> str:
    """What a click was told privately: the deferred response's content, or its followup."""
    texts = [m.content for m in result.followups] or [result.response.content]
    return texts[-1]


async def pixels(attachment: Any) -> bytes:
    return Image.open(io.BytesIO(await attachment.read())).convert("RGB").tobytes()


async def infotext_params(attachment: Any) -> Any:
    return params_from_infotext(read_png_infotext(await attachment.read()))


async def balance(sim: Any, member: Any) -> int:
    return (await sim.bot.dreams.credits.account(member.id)).balance


async def test_a_grid_gets_upscale_variation_and_tool_buttons_with_ids_only(sim):
    alice = sim.member("alice")
    message = await dream(sim, alice, count=2)
    job = job_id_of(message)
    assert buttons(message) == [
        [("U1", f"sd:upscale:{job}:0"), ("U2", f"sd:upscale:{job}:1")],
        [("V1", f"sd:vary:{job}:0"), ("V2", f"sd:vary:{job}:1")],
        [("V1 strong", f"sd:strong:{job}:0"), ("V2 strong", f"sd:strong:{job}:1")],
        [
            ("Reroll", f"sd:reroll:{job}"),
            ("Info", f"sd:info:{job}"),
            ("Edit", f"sd:edit:{job}"),
            ("Delete", f"sd:delete:{job}"),
        ],
    ]


async def test_reroll_runs_the_same_parameters_with_a_new_seed_as_a_reply(sim):
    alice = sim.member("alice")
    message = await dream(sim, alice, seed=11, cfg=5.5)
    before = await balance(sim, alice)
    click = await alice.click(message, label="Reroll")
    assert click.ephemeral
    assert answer(click).startswith("Queued as job ")
    [reply] = await reply_result(sim, message)
    assert reply.content == f"Reroll for {alice.mention}"
    rerolled = await infotext_params(reply.attachments[0])
    assert rerolled.seed != 11
    assert (rerolled.prompt, rerolled.cfg, rerolled.steps) == ("a cat", 5.5, 2)
    assert await balance(sim, alice) == before - 1
    # The reply is a result of its own, with its own buttons.
    assert buttons(reply)[1][0] == ("Reroll", f"sd:reroll:{job_id_of(reply)}")


async def test_variation_keeps_the_images_seed_and_blends_in_a_new_one(sim):
    alice = sim.member("alice")
    message = await dream(sim, alice, seed=20, count=2)
    await alice.click(message, label="V2")
    [reply] = await reply_result(sim, message)
    images = [await infotext_params(a) for a in reply.attachments]
    assert [p.seed for p in images] == [21, 21], "image 2 of a seed-20 grid has seed 21"
    assert {p.variation_strength for p in images} == {0.2}
    first, second = (p.variation_seed for p in images)
    assert second == first + 1


class TestStrengthOne:
    @pytest.fixture
    def settings(self, make_settings):
        # Strength 1: a variation is entirely the variation seed's own noise.
        return make_settings(variation_strength=1.0)

    async def test_variation_is_the_variation_seeds_own_image(self, sim):
        await check_variation_at_strength_1(sim)


async def check_variation_at_strength_1(sim: Any) -> None:
    alice = sim.member("alice")
    message = await dream(sim, alice, seed=5, sampler="Euler")
    await alice.click(message, label="Vary (subtle)")
    [reply] = await reply_result(sim, message)
    varied = await infotext_params(reply.attachments[0])
    plain = await dream(sim, alice, seed=varied.variation_seed, sampler="Euler")
    varied_pixels = await pixels(reply.attachments[0])
    plain_pixels = await pixels(plain.attachments[0])
    # slerp at 1 is the variation noise up to float rounding: equal to within one level.
    assert max(abs(a - b) for a, b in zip(varied_pixels, plain_pixels, strict=True)) <= 1


async def test_variation_at_strength_0_reproduces_the_original(sim):
    alice = sim.member("alice")
    message = await dream(sim, alice, seed=8, sampler="Euler")
    job = await sim.bot.scheduler.jobs.get(job_id_of(message))
    params = await sim.bot.actions.params_for(Action.VARY, job, 0)
    assert params.variation_seed is not None
    assert params.seed == 8
    [result] = await sim.bot.engine.generate(
        [EngineJob(0, replace(params, variation_strength=0.0))]
    )
    original = Image.open(io.BytesIO(await message.attachments[0].read())).tobytes()
    assert Image.open(io.BytesIO(result.images[0].png)).tobytes() == original


async def test_a_double_click_starts_one_job(sim, monkeypatch):
    alice = sim.member("alice")
    message = await dream(sim, alice)
    before = await balance(sim, alice)
    # The engine is held, so the first click's job is still pending at the second.
    gate = threading.Event()
    real = engine.pipelines.batches.generate_batch

    def held(*args: Any, **kwargs: Any) -> Any:
        gate.wait(20)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.pipelines.batches, "generate_batch", held)
    try:
        first = await alice.click(message, label="Reroll")
        second = await alice.click(message, label="Reroll")
    finally:
        gate.set()
    assert answer(first).startswith("Queued as job ")
    again = answer(second)
    assert "already on its way" in again
    assert await balance(sim, alice) == before - 1
    await reply_result(sim, message)
    assert len(replies_to(sim, message)) == 1


async def test_buttons_work_after_a_restart(sim):
    alice = sim.member("alice")
    message = await dream(sim, alice, seed=3)
    await sim.restart()
    await alice.click(message, label="Reroll")
    [reply] = await reply_result(sim, message)
    assert (await infotext_params(reply.attachments[0])).seed != 3


async def test_someone_elses_buttons_are_refused_unless_the_server_allows(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    message = await dream(sim, alice)
    refused = await bob.click(message, label="Reroll")
    text = answer(refused)
    assert text == f"❌ Only {alice.mention} can use the buttons of this result."
    assert replies_to(sim, message) == []

    denied = await bob.slash(sim.channel, "settings buttons", who="anyone")
    assert denied.response.content.startswith("Only admins")
    boss = admin(sim)
    saved = await boss.slash(sim.channel, "settings buttons", who="anyone")
    assert saved.response.content.startswith("Saved. Result buttons and reactions: anyone")
    before = await balance(sim, bob)
    await bob.click(message, label="Reroll")
    [reply] = await reply_result(sim, message)
    assert bob.mention in reply.content
    assert await balance(sim, bob) < before, "the clicker pays"


async def test_upscale_button_doubles_the_image(sim):
    alice = sim.member("alice")
    message = await dream(sim, alice, count=2, seed=30)
    await alice.click(message, label="U2")
    [reply] = await reply_result(sim, message)
    [attachment] = reply.attachments
    image = Image.open(io.BytesIO(await attachment.read()))
    assert image.size == (128, 128)
    params = await infotext_params(attachment)
    assert params.seed == 31
    assert "Upscale" in reply.embeds[0].author.name
    # An upscale is not text to image: no subtle variations (a variation seed means nothing).
    labels = [[label for label, _ in row] for row in buttons(reply)]
    assert labels == [
        ["Upscale", "Vary (strong)"],
        ["Reroll", "Info", "Edit", "Delete"],
        ["Zoom out 2x", "Zoom out 1.5x", "Custom zoom"],  # square: no Make square
        [None, None, None, None],  # the pans, shown by their arrows alone
    ]
    upscaled = await sim.bot.scheduler.jobs.get(job_id_of(reply))
    with pytest.raises(JobRefused, match="Subtle variations are for text-to-image"):
        await sim.bot.actions.params_for(Action.VARY, upscaled, 0)


async def test_strong_variation_runs_img2img_from_the_image(sim):
    alice = sim.member("alice")
    message = await dream(sim, alice, seed=40)
    await alice.click(message, label="Vary (strong)")
    [reply] = await reply_result(sim, message)
    job = await sim.bot.scheduler.jobs.get(job_id_of(reply))
    assert job.params["mode"] == "img2img"
    assert job.params["denoise"] == 0.65
    assert job.parent_id == job_id_of(message)
    assert job.action == "strong"


async def test_info_shows_the_parameters_and_the_command_privately(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    message = await dream(sim, alice, seed=77, negative="blurry")
    info = await bob.click(message, label="Info")  # anyone may read what is public anyway
    shown = info.followups[-1] if info.followups else info.response
    assert shown.ephemeral
    assert "/dream prompt:a cat negative:blurry seed:77 steps:2" in shown.content
    fields = {f.name: f.value for f in shown.embeds[0].fields}
    assert fields["Seed"] == "77"


async def test_edit_opens_a_modal_and_runs_the_new_prompt_with_the_same_seed(sim):
    alice = sim.member("alice")
    message = await dream(sim, alice, seed=9)
    shown = await alice.click(message, label="Edit")
    assert shown.modal is not None
    await alice.submit_modal(shown, {"prompt": "a dog", "negative": "cats"})
    [reply] = await reply_result(sim, message)
    edited = await infotext_params(reply.attachments[0])
    assert (edited.prompt, edited.negative, edited.seed) == ("a dog", "cats", 9)


async def test_delete_by_the_requester_removes_message_and_files(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    message = await dream(sim, alice)
    job = job_id_of(message)
    folder = sim.settings.images_dir / str(job)
    assert folder.exists()

    refused = await bob.click(message, label="Delete")
    text = answer(refused)
    assert "Only the member who asked" in text
    assert folder.exists()

    done = await alice.click(message, label="Delete")
    assert answer(done) == f"Deleted job {job}'s result."
    assert message.id not in [m.id for m in sim.channel.history()]
    assert not folder.exists()
    assert (await sim.bot.scheduler.jobs.get(job)).deleted_at is not None


async def test_a_click_on_a_deleted_result_or_without_credits_changes_nothing(sim):
    alice = sim.member("alice")
    message = await dream(sim, alice, count=2)
    job = job_id_of(message)
    # The files went (an owner cleaning the disk): upscaling needs them, rerolling does not.
    shutil.rmtree(sim.settings.images_dir / str(job))
    gone = await alice.click(message, label="U1")
    assert answer(gone) == f"❌ The images of job {job} are no longer on the bot's disk."
    await sim.bot.dreams.credits.set_balance(alice.id, 0, actor_id=0, reason="test")
    poor = await alice.click(message, label="Reroll")
    text = answer(poor)
    assert text.startswith("❌ ")
    assert "credit" in text
    assert await balance(sim, alice) == 0
    assert replies_to(sim, message) == []
    await sim.bot.scheduler.jobs.mark_deleted(job)
    deleted = await alice.click(message, label="Reroll")
    assert answer(deleted) == f"❌ Job {job}'s result was deleted."


async def test_reactions_reroll_delete_and_send_by_dm(sim):
    alice = sim.member("alice")
    message = await dream(sim, alice, seed=12)
    await alice.react(message, "✉️")
    dm = alice.user.dm_channel.history()
    assert dm[-1].attachments
    assert dm[-1].embeds
    assert read_png_infotext(await dm[-1].attachments[0].read()).startswith("a cat")

    await alice.react(message, "🔄")
    [reply] = await reply_result(sim, message)
    assert (await infotext_params(reply.attachments[0])).seed != 12

    await alice.react(reply, "❌")
    assert reply.id not in [m.id for m in sim.channel.history()]


async def test_reactions_by_others_and_on_other_messages(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    message = await dream(sim, alice)
    await bob.react(message, "❌")
    assert message.id in [m.id for m in sim.channel.history()]
    told = bob.user.dm_channel.history()
    assert "Only the member who asked" in told[-1].content

    # A member's own message: 🔄 there is an everyday reaction, not a request.
    own = await bob.send(sim.channel, "hello")
    await alice.react(own, "🔄")
    assert not alice.user.dm_channel.history()


async def test_a_reaction_on_a_bot_message_that_is_no_result_is_answered(sim):
    alice = sim.member("alice")
    note = await sim.bot.get_channel(sim.channel.id).send("The bot restarts at noon.")
    await alice.react(note, "🔄")
    [told] = alice.user.dm_channel.history()
    assert told.content == "That message is not a result I can act on."
    assert await sim.bot.scheduler.jobs.with_status(*JobStatus) == []


async def test_a_reroll_whose_input_image_is_gone_is_told_so(sim):
    alice = sim.member("alice")
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(picture, format="PNG")
    result = await alice.slash(
        sim.channel, "img2img", image=("p.png", picture.getvalue()), prompt="a sea", steps=2
    )
    await wait_until(sim.env, lambda: has_result(result))
    await sim.bot.scheduler.drain()
    job = await sim.bot.scheduler.jobs.get(job_id_of(result.response))
    shutil.rmtree(sim.settings.inputs_dir)
    gone = await alice.click(result.response, label="Reroll")
    assert answer(gone) == "❌ The image this job started from is no longer on the bot's disk."
    assert (await sim.bot.scheduler.jobs.get(job.id)).status == "succeeded"

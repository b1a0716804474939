"""/interpolate (issue 18) through SimCord: the command in, a message with the animation of
N frames (and the first frame's PNG) out, Reroll, a restart, prices and bad inputs."""

from __future__ import annotations

import io
from typing import Any

import av
import pytest
from PIL import Image

from bot.generation.actions import Action
from bot.generation.results import Presser
from bot.jobs.contracts import JobRefused
from data import JobStatus
from engine.api.infotext import params_from_infotext
from engine.imaging.animation import frame_count
from engine.imaging.images import read_png_infotext
from tests.conftest import wait_until
from tests.discord_helpers import has_result, leave_job, original_edits

# A 64x64 image of 2 steps is 1/640 of a standard image: at 640 credits each, one credit.
PRICE = 640.0


@pytest.fixture
def settings(make_settings: Any, tiny_sd1: Any) -> Any:
    # "large" allows sizes whose animation cannot fit an upload (refused before it runs).
    models = {
        "tiny": {"source": str(tiny_sd1), "default_size": (64, 64), "max_pixels": 128 * 128},
        "large": {"source": str(tiny_sd1), "max_pixels": 2048 * 2048},
    }
    return make_settings(price_per_image=PRICE, starting_credits=200, models=models)


async def interpolate(sim: Any, member: Any, **options: Any) -> Any:
    result = await member.slash(
        sim.channel, "interpolate", **{"prompt": "a cat", "steps": 2, "frames": 4, **options}
    )
    await wait_until(sim.env, lambda: has_result(result))
    await sim.bot.scheduler.drain()
    return result.response


def job_of(message: Any) -> int:
    return int(message.embeds[0].footer.text.split()[1])


def labels(message: Any) -> list[str]:
    found = []
    for row in message.components:
        children = row["components"] if isinstance(row, dict) else row.children
        found += [c["label"] if isinstance(c, dict) else c.label for c in children]
    return found


async def balance(sim: Any, member: Any) -> int:
    return (await sim.bot.dreams.credits.account(member.id)).balance


async def test_interpolate_posts_an_animation_of_its_frames_and_the_first_frame(sim):
    alice = sim.member("alice")
    before = await balance(sim, alice)
    result = await alice.slash(
        sim.channel,
        "interpolate",
        prompt="a cat",
        to_prompt="a dog",
        seed=3,
        to_seed=9,
        frames=6,
        steps=2,
    )
    await wait_until(sim.env, lambda: has_result(result))
    await sim.bot.scheduler.drain()
    queued = original_edits(sim.env, result)[0]["content"]
    assert "Queued: position 1. 6 frames 64x64, 2 steps" in queued
    message = result.response
    animation, first = message.attachments
    assert animation.filename.endswith("-6-frames.webp")
    data = await animation.read()
    assert frame_count(data) == 6
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (64, 64)
        assert image.info["loop"] == 0
    png = await first.read()
    params = params_from_infotext(read_png_infotext(png) or "")
    assert (params.mode, params.prompt, params.prompt_to) == ("interpolate", "a cat", "a dog")
    assert (params.seed, params.seed_to, params.frames) == (3, 9, 6)
    fields = {field.name: field.value for field in message.embeds[0].fields}
    assert fields["To"] == "a dog"
    assert fields["Frames"] == "6 at 8 fps"
    assert labels(message) == ["Reroll", "Info", "Delete"]
    # Priced per frame: a 64x64 image of 2 steps is 1 credit here, so six frames are 6.
    job = await sim.bot.scheduler.jobs.get(job_of(message))
    assert (job.kind, job.cost) == ("interpolate", 6)
    assert await balance(sim, alice) == before - 6


@pytest.mark.parametrize("fmt", ["gif", "mp4"])
async def test_gif_and_mp4_hold_every_frame(sim, fmt):
    alice = sim.member("alice")
    message = await interpolate(sim, alice, to_seed=5, frames=5, fps=10, format=fmt)
    animation = message.attachments[0]
    assert animation.filename.endswith(f"-5-frames.{fmt}")
    data = await animation.read()
    if fmt == "gif":
        assert frame_count(data) == 5
        return
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.average_rate) == ("h264", 10)
        assert sum(1 for _ in container.decode(video=0)) == 5


async def test_reroll_draws_new_seeds_and_works_after_a_restart(sim):
    alice = sim.member("alice")
    message = await interpolate(sim, alice, to_prompt="a dog", seed=3, to_seed=9)
    await sim.restart()
    click = await alice.click(message, label="Reroll")
    assert click.response.content.startswith("Queued as job "), click.response.content
    job_id = int(click.response.content.split()[3].rstrip(","))

    def reply() -> list[Any]:
        return [m for m in sim.channel.history() if m.embeds and job_of(m) == job_id]

    await wait_until(sim.env, lambda: bool(reply()))
    await sim.bot.scheduler.drain()
    [rerolled] = reply()
    assert rerolled.reference.message_id == message.id
    params = params_from_infotext(read_png_infotext(await rerolled.attachments[1].read()) or "")
    assert (params.prompt_to, params.frames) == ("a dog", 4)
    assert (params.seed, params.seed_to) != (3, 9)
    assert params.seed_to is not None
    assert frame_count(await rerolled.attachments[0].read()) == 4


async def test_an_interpolation_left_queued_is_posted_after_a_restart(sim):
    alice = sim.member("alice")
    queued = await leave_job(sim, alice, "queued", 0, mode="interpolate", seed_to=8, frames=4)
    await sim.restart()
    await wait_until(
        sim.env,
        lambda: any(f"job {queued.id} finished" in m.content for m in sim.channel.history()),
    )
    await sim.bot.scheduler.drain()
    [posted] = [m for m in sim.channel.history() if f"job {queued.id} finished" in m.content]
    assert frame_count(await posted.attachments[0].read()) == 4
    assert labels(posted) == ["Reroll", "Info", "Delete"]


async def test_other_actions_say_they_are_not_for_animations_and_send_me_sends_it(sim):
    alice = sim.member("alice")
    message = await interpolate(sim, alice, to_seed=2)
    before = await balance(sim, alice)
    presser = Presser(alice.id, sim.guild.id, sim.channel.id)
    for action in (Action.UPSCALE, Action.VARY, Action.EDIT, Action.ZOOM_OUT_2):
        with pytest.raises(JobRefused, match=f"^{action.label} is not for animations; Reroll"):
            await sim.bot.actions.start(action, job_of(message), presser, observer=None, image=0)
    assert await balance(sim, alice) == before
    bob = sim.member("bob")  # a second member may not press another's buttons
    refused = await bob.click(message, label="Reroll")
    assert (
        refused.response.content == f"❌ Only {alice.mention} can use the buttons of this result."
    )
    assert len(await sim.bot.scheduler.jobs.with_status(*JobStatus)) == 1
    await alice.react(message, "✉️")
    await wait_until(sim.env, lambda: bool(alice.user.dm_channel.history()))
    [sent] = alice.user.dm_channel.history()
    assert [a.filename.rsplit(".", 1)[1] for a in sent.attachments] == ["webp", "png"]
    assert frame_count(await sent.attachments[0].read()) == 4


@pytest.mark.parametrize(
    ("options", "answer"),
    [
        ({}, "Nothing to interpolate: give a second prompt or a second seed that differs."),
        ({"seed": 4, "to_seed": 4}, "Nothing to interpolate"),
        ({"to_prompt": "a [dog:cat:0.5]"}, "Prompt editing, alternation and AND in the second"),
        ({"to_prompt": "a dog <lora:x:1>"}, "LoRA tags go in the first prompt"),
        (
            # SimCord reports a 25 MiB limit, as a server with level 2 boosts has.
            {"to_seed": 2, "frames": 48, "size": "1600x1600", "format": "gif", "model": "large"},
            "A GIF of 48 frames at 1600x1600 would not fit Discord's 25 MiB upload limit",
        ),
    ],
)
async def test_bad_inputs_get_one_sentence_and_change_nothing(sim, options, answer):
    alice = sim.member("alice")
    before = await balance(sim, alice)
    result = await alice.slash(
        sim.channel, "interpolate", **{"prompt": "a cat", "steps": 2, "seed": 1, **options}
    )
    assert result.ephemeral
    assert answer in result.response.content
    sim.expected_errors()
    assert await sim.bot.scheduler.jobs.with_status(*JobStatus) == []
    assert await balance(sim, alice) == before


async def test_reproduce_of_the_first_frame_makes_the_animation_again(sim):
    alice = sim.member("alice")
    message = await interpolate(sim, alice, to_prompt="a (dog:1.2), grinning", to_seed=7)
    animation, first = [await a.read() for a in message.attachments]
    again = await alice.slash(sim.channel, "reproduce", image=("first.png", first))
    await wait_until(sim.env, lambda: has_result(again))
    await sim.bot.scheduler.drain()
    queued = original_edits(sim.env, again)[0]["content"]
    assert "Not reproduced" not in queued
    rerun, rerun_first = [await a.read() for a in again.response.attachments]
    assert frame_count(rerun) == frame_count(animation) == 4
    assert read_png_infotext(rerun_first) == read_png_infotext(first)
    same = Image.open(io.BytesIO(rerun_first)).tobytes() == Image.open(io.BytesIO(first)).tobytes()
    assert same

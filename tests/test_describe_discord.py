"""/describe through SimCord (issue 18): a member's picture in, four prompts in A1111's syntax
out under buttons 1-4, each of which runs /dream with its prompt for whoever may press it,
charged to them and queued as any /dream, after a restart too. Describing is free."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from data.jobs import JobStatus
from engine.pipelines.tiny_describe import save_tiny_captioner, save_tiny_ranker
from tests.conftest import wait_until
from tests.discord_helpers import ephemeral_followups

NOT_SET_UP = "❌ /describe is not set up on this bot."


@pytest.fixture(scope="session")
def blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_captioner(tmp_path_factory.mktemp("models") / "tiny-blip")


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_ranker(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture
def make_describing(make_settings: Any, blip: Path, clip: Path) -> Any:
    """Settings of a bot with SDBOT_CAPTIONER and SDBOT_CLIP_RANKER at the tiny models."""

    def make(**overrides: Any) -> Any:
        values = {"captioner": str(blip), "clip_ranker": str(clip), "max_attachment_bytes": 200_000}
        return make_settings(**{**values, **overrides})

    return make


@pytest.fixture
def settings(make_describing: Any) -> Any:
    return make_describing()


def png(seed: int = 0, size: tuple[int, int] = (80, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def animated_gif(seed: int = 0) -> bytes:
    frames = [Image.open(io.BytesIO(png(seed + k))).convert("P") for k in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buffer.getvalue()


def labels(message: Any) -> list[str | None]:
    found = []
    for row in message.components:
        children = row["components"] if isinstance(row, dict) else row.children
        found += [c.get("label") if isinstance(c, dict) else c.label for c in children]
    return found


def prompts_of(message: Any) -> list[str]:
    """The numbered prompts of the reply's embed, as a member reads them."""
    text = message.embeds[0].description
    return [block.split(" ", 1)[1].replace("\\", "") for block in text.split("\n\n")]


def answer(result: Any) -> str:
    return ([m.content for m in result.followups] or [result.response.content])[-1]


async def describe(sim: Any, member: Any, picture: bytes) -> Any:
    result = await member.slash(sim.channel, "describe", image=("mine.png", picture))
    await wait_until(
        sim.env,
        lambda: bool(result.response and result.response.embeds) or ephemeral_followups(result),
    )
    return result


async def balance(sim: Any, member: Any) -> int:
    return (await sim.bot.dreams.credits.account(member.id)).balance


async def jobs(sim: Any) -> list[Any]:
    await sim.bot.scheduler.drain()
    return await sim.bot.scheduler.jobs.with_status(*JobStatus)


def replies(sim: Any, message: Any) -> list[Any]:
    return [
        m
        for m in sim.channel.history()
        if m.reference is not None and m.reference.message_id == message.id and m.embeds
    ]


async def dreamed(sim: Any, message: Any, clicked: Any) -> Any:
    """The job a click queued, finished, and the reply that shows it."""
    text = answer(clicked)
    assert text.startswith("Queued as job "), text
    job_id = int(text.split(" as job ")[1].split(",")[0])
    await wait_until(sim.env, lambda: bool(replies(sim, message)))
    await sim.bot.scheduler.drain()
    return await sim.bot.scheduler.jobs.get(job_id)


async def test_four_prompts_under_four_buttons_and_a_click_dreams_one(sim):
    alice = sim.member("alice")
    before = await balance(sim, alice)
    result = await describe(sim, alice, png(1))
    message = result.response
    assert not result.ephemeral
    prompts = prompts_of(message)
    assert len(prompts) == 4
    assert len(set(prompts)) == 4
    assert labels(message) == ["1", "2", "3", "4"]
    assert message.embeds[0].author.name == "Prompts for alice's picture"
    [stored] = [await sim.bot.descriptions.repository.get(1)]
    assert stored is not None
    assert list(stored.prompts) == prompts
    assert await balance(sim, alice) == before, "describing is free"
    assert await jobs(sim) == []

    clicked = await alice.click(message, label="2")
    job = await dreamed(sim, message, clicked)
    assert job.status is JobStatus.SUCCEEDED
    assert (job.user_id, job.kind, job.action) == (alice.id, "dream", "describe")
    assert job.params["prompt"] == stored.prompts[1]
    assert job.params["prompt_syntax"] == "a1111"
    assert job.cost > 0
    assert await balance(sim, alice) == before - job.cost
    [reply] = replies(sim, message)
    assert reply.content == f"Prompt 2 of /describe for {alice.mention}"
    assert reply.embeds[0].author.name == "Dream for alice"


async def test_the_same_picture_gets_the_same_prompts(sim):
    alice = sim.member("alice")
    first = prompts_of((await describe(sim, alice, png(2))).response)
    again = prompts_of((await describe(sim, alice, png(2))).response)
    other = prompts_of((await describe(sim, alice, png(3))).response)
    assert again == first
    assert other != first


async def test_the_buttons_work_after_a_restart(sim):
    alice = sim.member("alice")
    message = (await describe(sim, alice, png(4))).response
    stored = await sim.bot.descriptions.repository.get(1)
    await sim.restart()
    clicked = await alice.click(message, label="4")
    job = await dreamed(sim, message, clicked)
    assert job.params["prompt"] == stored.prompts[3]
    assert job.status is JobStatus.SUCCEEDED


async def test_someone_else_may_press_only_where_the_server_lets_anyone(sim, make_describing):
    alice, bob = sim.member("alice"), sim.member("bob")
    message = (await describe(sim, alice, png(5))).response
    refused = await bob.click(message, label="1")
    assert answer(refused) == f"❌ Only {alice.mention} can use the buttons of this result."
    assert await jobs(sim) == []

    sim.settings = make_describing(buttons_for_anyone=True)
    await sim.restart()
    alice_before, bob_before = await balance(sim, alice), await balance(sim, bob)
    clicked = await bob.click(message, label="1")
    job = await dreamed(sim, message, clicked)
    assert job.user_id == bob.id
    assert await balance(sim, bob) == bob_before - job.cost
    assert await balance(sim, alice) == alice_before


@pytest.mark.parametrize(
    ("picture", "told"),
    [
        (b"GIF89a", "❌ That file is not an image I can read."),
        (b"", "❌ That image is an empty file."),
        (b"\0" * 300_000, "❌ That image is 293 KB; the limit is 195.3 KB."),
    ],
)
async def test_a_bad_attachment_gets_one_sentence_and_changes_nothing(sim, picture, told):
    alice = sim.member("alice")
    before = await balance(sim, alice)
    result = await alice.slash(sim.channel, "describe", image=("bad.png", picture))
    await wait_until(sim.env, lambda: result.ephemeral or ephemeral_followups(result))
    said = result.response.content if result.ephemeral else ephemeral_followups(result)[-1]
    assert said == told
    assert await sim.bot.descriptions.repository.get(1) is None
    assert await balance(sim, alice) == before
    assert not [m for m in sim.channel.history() if m.embeds]


async def test_an_animated_picture_is_described_by_its_first_frame(sim):
    alice = sim.member("alice")
    animated = prompts_of((await describe(sim, alice, animated_gif(6))).response)
    first_frame = Image.open(io.BytesIO(animated_gif(6))).convert("RGB")
    buffer = io.BytesIO()
    first_frame.save(buffer, format="PNG")
    still = prompts_of((await describe(sim, alice, buffer.getvalue())).response)
    assert animated == still


async def test_without_the_models_describe_says_so_and_nothing_else(sim, make_settings):
    alice = sim.member("alice")
    message = (await describe(sim, alice, png(7))).response
    sim.settings = make_settings()  # SDBOT_CAPTIONER and SDBOT_CLIP_RANKER emptied
    await sim.restart()
    before = await balance(sim, alice)
    result = await alice.slash(sim.channel, "describe", image=("mine.png", png(7)))
    assert result.ephemeral
    assert result.response.content == NOT_SET_UP
    clicked = await alice.click(message, label="1")
    assert answer(clicked) == NOT_SET_UP
    assert await jobs(sim) == []
    assert await balance(sim, alice) == before
    assert await sim.bot.descriptions.repository.get(2) is None


async def test_a_blocked_member_gets_no_prompts(sim):
    import discord

    role = sim.guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    boss = sim.guild.add_member(sim.env.create_user("boss"), roles=[role])
    alice = sim.member("alice")
    await boss.slash(sim.channel, "settings block", member=alice, reason="spam")
    result = await describe(sim, alice, png(8))
    assert ephemeral_followups(result) == ["❌ You are blocked from using this bot here."]
    assert await sim.bot.descriptions.repository.get(1) is None


async def test_one_describe_at_a_time_per_member(sim):
    from bot.jobs.contracts import JobRefused, Requester

    alice = sim.member("alice")
    descriptions = sim.bot.descriptions

    async def ask() -> Any:
        return await descriptions.describe(
            png(9), user_id=alice.id, guild_id=None, channel_id=None, requester=Requester()
        )

    first, second = await asyncio.gather(ask(), ask(), return_exceptions=True)
    assert first.prompts, "the first is described"
    assert isinstance(second, JobRefused)
    assert str(second) == "Your last picture is still being described; wait for its prompts."
    assert (await ask()).prompts == first.prompts, "once it is done, the next is taken"

"""/blend and /dream's image prompts through SimCord (issue 18): pictures in, a result with
its buttons out, priced and queued like /dream; bad pictures, a missing second picture and a
bot without an IP-Adapter each answered in one sentence, with nothing charged or stored."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from data.jobs import JobStatus
from engine.api.infotext import parse_infotext
from engine.api.params import GenerationParams
from engine.imaging.images import read_png_infotext
from engine.pipelines.tiny_ip_adapter import WEIGHT_NAME, save_tiny_ip_adapter
from tests.conftest import wait_until
from tests.discord_helpers import ephemeral_followups, has_result, original_edits


@pytest.fixture(scope="session")
def tiny_ip_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_sd1: Path) -> Path:
    return save_tiny_ip_adapter(tmp_path_factory.mktemp("models") / "tiny-ip-adapter", tiny_sd1)


def model(tiny_sd1: Path, adapter: Path | None, side: int = 64) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": str(tiny_sd1),
        "default_size": (side, side),
        "max_pixels": 256 * 256,
    }
    if adapter is not None:
        spec["ip_adapter"] = str(adapter / WEIGHT_NAME)
    return spec


@pytest.fixture
def settings(make_settings: Any, tiny_sd1: Path, tiny_ip_adapter: Path) -> Any:
    return make_settings(
        models={
            "tiny": model(tiny_sd1, tiny_ip_adapter),
            # Large enough for the size presets (multiples of 64) to differ by shape.
            "wide": model(tiny_sd1, tiny_ip_adapter, side=192),
        },
        max_attachment_bytes=200_000,
    )


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(sum(color))
    noise = rng.integers(0, 40, (size[1], size[0], 3), dtype=np.uint8)
    pixels = np.clip(np.array(color, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


RED, BLUE, GREEN = png((220, 30, 30)), png((30, 30, 220), (40, 72)), png((30, 200, 30))


async def finished(sim: Any, result: Any) -> Any:
    await wait_until(sim.env, lambda: has_result(result) or ephemeral_followups(result))
    await sim.bot.scheduler.drain()
    assert has_result(result), ephemeral_followups(result)
    return result.response


def private_answer(result: Any) -> str:
    return result.response.content if result.ephemeral else ephemeral_followups(result)[-1]


async def values_of(message: Any) -> dict[str, str]:
    return parse_infotext(read_png_infotext(await message.attachments[0].read())).values


async def jobs_of(sim: Any) -> list[Any]:
    await sim.bot.scheduler.drain()
    return await sim.bot.scheduler.jobs.with_status(*JobStatus)


async def balance(sim: Any, member: Any) -> int:
    return (await sim.bot.dreams.credits.account(member.id)).balance


def stored_inputs(sim: Any) -> list[Path]:
    return list(sim.bot.images.inputs.folder.rglob("*.png"))


def labels(message: Any) -> list[str | None]:
    """Every button's label (SimCord's payloads or discord.py's components)."""
    found = []
    for row in message.components:
        children = row["components"] if isinstance(row, dict) else row.children
        found += [c.get("label") if isinstance(c, dict) else c.label for c in children]
    return found


async def test_blend_mixes_two_pictures_into_a_result_with_buttons(sim):
    alice = sim.member("alice")
    before = await balance(sim, alice)
    result = await alice.slash(
        sim.channel, "blend", image1=("red.png", RED), image2=("blue.png", BLUE), seed=3
    )
    message = await finished(sim, result)
    values = await values_of(message)
    assert values["IP-Adapter"] == "ip-adapter_tiny"
    assert values["IP-Adapter images"] == "2"
    assert values["IP-Adapter weight"] == "1"  # /blend's pictures are the whole prompt
    assert "Reroll" in labels(message)
    assert "Upscale" in labels(message)
    fields = {field.name: field.value for field in message.embeds[0].fields}
    assert fields["Image prompts"] == "2 (weight 1)"
    [job] = await jobs_of(sim)
    assert job.kind == "dream"
    assert job.params["prompt"] == ""
    # Stored by content with the job (attachment URLs expire), in the order given.
    keys = job.params["image_prompts"]
    assert len(keys) == 2
    assert {p.stem for p in stored_inputs(sim)} == set(keys)
    assert "http" not in str(job.params)
    # Priced as /dream prices the same image: the pictures add nothing to the price.
    params = GenerationParams.from_dict(job.params)
    assert job.cost == sim.bot.dreams.price(replace(params, image_prompts=(), prompt="a cat"))
    assert await balance(sim, alice) == before - job.cost


async def test_blend_takes_up_to_five_pictures_a_shape_and_a_weight(sim):
    alice = sim.member("alice")
    result = await alice.slash(
        sim.channel,
        "blend",
        image1=("a.png", RED),
        image2=("b.png", BLUE),
        image3=("c.png", GREEN),
        image4=("d.png", png((200, 200, 30))),
        image5=("e.png", png((200, 30, 200))),
        dimensions="landscape",
        weight=0.5,
        prompt="a painting",
        model="wide",
        seed=1,
    )
    message = await finished(sim, result)
    image = Image.open(io.BytesIO(await message.attachments[0].read()))
    assert image.size == (256, 128)  # the model's landscape 3:2 preset
    values = await values_of(message)
    assert (values["IP-Adapter images"], values["IP-Adapter weight"]) == ("5", "0.5")


async def test_a_blend_reroll_blends_the_same_pictures_again(sim):
    alice = sim.member("alice")
    first = await finished(
        sim, await alice.slash(sim.channel, "blend", image1=("r.png", RED), image2=("b.png", BLUE))
    )
    info = await alice.click(first, label="Info")
    told = ([m.content for m in info.followups] or [info.response.content])[-1]
    assert told.startswith("Its image prompts are pictures no command line carries")
    click = await alice.click(first, label="Reroll")
    assert "Queued as job" in ([m.content for m in click.followups] or [click.response.content])[-1]

    def replied() -> bool:
        return any(m.reference and m.embeds and m.attachments for m in sim.channel.history())

    await wait_until(sim.env, replied)
    await sim.bot.scheduler.drain()
    original, reroll = sorted(await jobs_of(sim), key=lambda job: job.id)
    assert reroll.params["image_prompts"] == original.params["image_prompts"]
    assert reroll.params["seed"] != original.params["seed"]


async def test_dream_takes_an_image_prompt_and_a_style_image(sim):
    alice = sim.member("alice")
    prompted = await alice.slash(
        sim.channel, "dream", prompt="a cat", steps=2, image_prompt=("red.png", RED)
    )
    values = await values_of(await finished(sim, prompted))
    assert values["IP-Adapter images"] == "1"
    assert values["IP-Adapter weight"] == "0.6"
    assert "IP-Adapter mode" not in values
    styled = await alice.slash(
        sim.channel,
        "dream",
        prompt="a cat",
        steps=2,
        style_image=("blue.png", BLUE),
    )
    styled_message = await finished(sim, styled)
    values = await values_of(styled_message)
    # /dream is at Discord's 25 options: its image prompts take the default weight.
    assert (values["IP-Adapter mode"], values["IP-Adapter weight"]) == ("style", "0.6")
    fields = {field.name: field.value for field in styled_message.embeds[0].fields}
    assert fields["Image prompts"] == "1 style (weight 0.6)"
    plain = await alice.slash(sim.channel, "dream", prompt="a cat", steps=2)
    assert "IP-Adapter" not in await values_of(await finished(sim, plain))


async def test_reproduce_says_the_pictures_are_not_in_the_infotext(sim):
    alice = sim.member("alice")
    dreamt = await finished(
        sim,
        await alice.slash(
            sim.channel, "dream", prompt="a cat", steps=2, image_prompt=("r.png", RED)
        ),
    )
    posted = await dreamt.attachments[0].read()
    again = await alice.slash(sim.channel, "reproduce", image=("posted.png", posted))
    await finished(sim, again)
    queued = original_edits(sim.env, again)[0]["content"]
    assert "Its 1 image prompt is not in the infotext: made from the text alone." in queued
    assert "Not reproduced" not in queued
    rerun = max(await jobs_of(sim), key=lambda job: job.id)
    assert rerun.params["image_prompts"] == []
    blended = await finished(
        sim, await alice.slash(sim.channel, "blend", image1=("r.png", RED), image2=("b.png", BLUE))
    )
    before = await balance(sim, alice)
    refused = await alice.slash(
        sim.channel, "reproduce", image=("b.png", await blended.attachments[0].read())
    )
    await wait_until(sim.env, lambda: bool(ephemeral_followups(refused)))
    assert private_answer(refused) == (
        "❌ Its 2 image prompts are not in the infotext and it has no text: /blend the pictures."
    )
    assert await balance(sim, alice) == before


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"image1": ("r.png", RED), "image2": ("notes.png", b"just some text")},
            "❌ image2: That file is not an image I can read.",
        ),
        (
            {"image1": ("r.png", RED), "image2": ("big.png", b"\0" * 300_000)},
            "is 293 KB; the limit is 195.3 KB",
        ),
        (
            {"image1": ("strip.png", png((9, 9, 9), (640, 64))), "image2": ("b.png", BLUE)},
            "❌ image1: That picture is 640x64: too long and thin to use.",
        ),
    ],
)
async def test_bad_pictures_are_refused_in_a_sentence_with_nothing_charged_or_stored(
    sim, options, expected
):
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "blend", **options)
    await wait_until(sim.env, lambda: result.ephemeral or bool(ephemeral_followups(result)))
    assert expected in private_answer(result)
    sim.expected_errors()
    assert await jobs_of(sim) == []
    assert stored_inputs(sim) == []
    assert await balance(sim, alice) == sim.settings.starting_credits


async def test_blend_needs_a_second_picture(sim):
    """Discord itself refuses a /blend without image2 (a required option); the bot never
    sees it, and nothing is queued."""
    from simcord import OptionError

    alice = sim.member("alice")
    with pytest.raises(OptionError, match="requires option 'image2'"):
        await alice.slash(sim.channel, "blend", image1=("r.png", RED))
    assert await jobs_of(sim) == []


async def test_an_image_prompt_with_a_control_image_is_refused(sim):
    alice = sim.member("alice")
    both = await alice.slash(
        sim.channel,
        "dream",
        prompt="a cat",
        image_prompt=("r.png", RED),
        control_image=("c.png", BLUE),
    )
    assert both.response.content == ("Image prompts and a control image cannot be used together.")
    sim.expected_errors()
    assert await jobs_of(sim) == []


async def test_without_an_ip_adapter_blend_and_image_prompts_are_not_set_up(
    sim, make_settings, tiny_sd1, tiny_ip_adapter
):
    alice = sim.member("alice")
    sim.settings = make_settings(models={"tiny": model(tiny_sd1, None)})  # no "ip_adapter"
    await sim.restart()
    blend = await alice.slash(sim.channel, "blend", image1=("r.png", RED), image2=("b.png", BLUE))
    assert blend.ephemeral
    assert blend.response.content == "/blend is not set up on this bot."
    dream = await alice.slash(sim.channel, "dream", prompt="a cat", image_prompt=("r.png", RED))
    assert dream.response.content == "Image prompts are not set up on this bot."
    # With another model that has one, the sentence names the model chosen.
    sim.settings = make_settings(
        models={"tiny": model(tiny_sd1, None), "ip": model(tiny_sd1, tiny_ip_adapter)}
    )
    await sim.restart()
    named = await alice.slash(sim.channel, "blend", image1=("r.png", RED), image2=("b.png", BLUE))
    assert named.response.content == "/blend is not set up for model tiny on this bot."
    sim.expected_errors()
    assert await jobs_of(sim) == []
    assert stored_inputs(sim) == []
    assert await balance(sim, alice) == sim.settings.starting_credits
    chosen = await alice.slash(
        sim.channel, "blend", image1=("r.png", RED), image2=("b.png", BLUE), model="ip"
    )
    await finished(sim, chosen)

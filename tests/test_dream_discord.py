"""/dream through discord.py's real stack (SimCord), the engine thread and SQLite."""

from __future__ import annotations

import datetime
import io
from pathlib import Path

import pytest
from PIL import Image

from engine.api.infotext import params_from_infotext
from engine.imaging.images import read_png_infotext
from tests.conftest import wait_until
from tests.discord_helpers import (
    ephemeral_followups,
    has_result,
    leave_job,
    original_edits,
)


async def test_dream_posts_images_with_embed_and_infotext(sim):
    alice = sim.member("alice")
    started = sim.env.now()
    result = await alice.slash(
        sim.channel,
        "dream",
        prompt="a lighthouse, (stormy:1.2) sea",
        negative="blurry, text",
        seed=1234,
        steps=3,
        cfg=6.5,
        count=2,
        sampler="DPM++ 2M",
        scheduler="Karras",
    )
    callbacks = [r.json for r in sim.env.http_requests if r.path.endswith("/callback")]
    assert callbacks == [{"type": 5}], "the command defers first"
    assert result.response.message.created_at - started < datetime.timedelta(seconds=3)

    await wait_until(sim.env, lambda: has_result(result))
    message = result.response
    assert alice.mention in message.content
    [embed] = message.embeds
    fields = {field.name: field.value for field in embed.fields}
    assert embed.description == "a lighthouse, (stormy:1.2) sea"
    assert fields["Negative"] == "blurry, text"
    assert fields["Seeds"] == "1234, 1235"
    assert fields["Steps"] == "3"
    assert fields["Sampler"] == "DPM++ 2M Karras"
    assert fields["CFG"] == "6.5"
    assert fields["Size"] == "64x64"
    assert fields["Model"] == "tiny"
    assert fields["Time"].endswith("s")

    job_id = embed.footer.text.split()[1]
    assert embed.footer.text == f"job {job_id} · cost 1 credit · balance 49"
    assert [a.filename for a in message.attachments] == [
        f"{job_id}-0-1234.png",
        f"{job_id}-1-1235.png",
    ]
    for attachment, seed in zip(message.attachments, (1234, 1235), strict=True):
        png = await attachment.read()
        assert Image.open(io.BytesIO(png)).size == (64, 64)
        params = params_from_infotext(read_png_infotext(png), count=2)
        assert params.prompt == "a lighthouse, (stormy:1.2) sea"
        assert params.negative == "blurry, text"
        assert (params.seed, params.steps, params.cfg) == (seed, 3, 6.5)
        assert (params.width, params.height, params.sampler, params.model) == (
            64,
            64,
            "DPM++ 2M",
            "tiny-sd1",  # the checkpoint's name, as A1111 writes it: the model's folder
        )
        assert params.schedule == "Karras"


async def test_progress_edits_arrive_before_the_result(sim):
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "dream", prompt="a fox", steps=6, seed=5)
    await wait_until(sim.env, lambda: has_result(result))
    edits = original_edits(sim.env, result)
    contents = [edit.get("content") for edit in edits]
    assert contents[0].startswith("Queued: position 1.")
    progress = [c for c in contents if c and "step" in c]
    assert progress, contents
    assert any(c.startswith("`") and "step 6/6" not in c for c in progress)
    previews = [
        e for e in edits if any(a["filename"] == "preview.png" for a in e.get("attachments", []))
    ]
    assert previews, "at least one progress edit carries a latent preview"
    # The last edit is the result: the preview is gone and the images are attached.
    final = edits[-1]
    assert [a["filename"].endswith(".png") for a in final["attachments"]] == [True]
    assert "preview.png" not in [a.filename for a in result.response.attachments]


async def test_job_row_records_the_run(sim):
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "dream", prompt="a tree", seed=7, steps=2)
    await wait_until(sim.env, lambda: has_result(result))
    await sim.bot.scheduler.drain()
    [job] = await sim.bot.scheduler.jobs.with_status(*__import__("data").JobStatus)
    assert job.status == "succeeded"
    assert job.user_id == alice.id
    assert job.channel_id == sim.channel.id
    assert job.message_id == result.response.id
    assert job.params["seed"] == 7
    assert job.started_at >= job.created_at
    assert job.finished_at >= job.started_at
    images = await sim.bot.scheduler.jobs.images(job.id)
    assert [image.seed for image in images] == [7]
    stored = Path(images[0].path).read_bytes()  # noqa: ASYNC240 - a test reading its own file
    assert read_png_infotext(stored) == images[0].infotext


async def test_same_seed_same_pixels_through_discord(sim):
    alice = sim.member("alice")
    pixels = []
    for _ in range(2):
        result = await alice.slash(sim.channel, "dream", prompt="a cat", seed=99, steps=2)
        await wait_until(sim.env, lambda result=result: has_result(result))
        png = await result.response.attachments[0].read()
        pixels.append(Image.open(io.BytesIO(png)).tobytes())
    assert pixels[0] == pixels[1]


async def test_random_seed_is_shown_and_reproducible(sim):
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "dream", prompt="a cat", steps=2)
    await wait_until(sim.env, lambda: has_result(result))
    seed = int({f.name: f.value for f in result.response.embeds[0].fields}["Seed"])
    assert 0 <= seed < 2**32


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"size": "100x64"}, "multiples of 8"),
        ({"size": "512x512"}, "allows at most"),
        ({"size": "big"}, "is not WIDTHxHEIGHT"),
        ({"prompt": "   "}, "The prompt is empty."),
        ({"prompt": "x" * 2000}, "the limit is 1500"),
        ({"model": "nope"}, "Unknown model 'nope'"),
    ],
)
async def test_bad_input_gets_an_ephemeral_answer_and_no_job(sim, options, expected):
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "dream", **{"prompt": "a cat", **options})
    assert result.ephemeral
    assert expected in result.response.content
    [error] = sim.expected_errors()
    assert expected in str(error.__cause__ or getattr(error, "original", error))
    assert await sim.bot.scheduler.jobs.with_status(*__import__("data").JobStatus) == []
    # and the bot keeps serving
    ok = await alice.slash(sim.channel, "dream", prompt="a cat", steps=1)
    await wait_until(sim.env, lambda: has_result(ok))


async def failed_jobs(sim) -> list:
    await sim.bot.scheduler.drain()
    return await sim.bot.scheduler.jobs.with_status(__import__("data").JobStatus.FAILED)


@pytest.fixture
def settings(make_settings, tiny_sd1, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    return make_settings(
        models={
            "tiny": {"source": str(tiny_sd1), "default_size": (64, 64), "max_pixels": 128 * 128},
            "broken": {"source": str(broken), "default_size": (64, 64)},
        }
    )


async def test_model_that_fails_to_load_tells_the_member_and_the_bot_goes_on(sim):
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "dream", prompt="a cat", model="broken", steps=1)
    await wait_until(sim.env, lambda: ephemeral_followups(result))
    [reason] = ephemeral_followups(result)
    assert reason == (
        "❌ Model broken could not be loaded: the bot's log has the details."
        " Your 1 credit was refunded."
    )
    assert result.response is None or not result.response.embeds
    [job] = await failed_jobs(sim)
    assert job.error.startswith("Model broken could not be loaded")

    bob = sim.member("bob")
    ok = await bob.slash(sim.channel, "dream", prompt="a dog", steps=1)
    await wait_until(sim.env, lambda: has_result(ok))


async def test_engine_out_of_memory_fails_only_that_job(sim, monkeypatch):
    import torch

    import engine.pipelines.batches

    real = engine.pipelines.batches.generate_batch

    def out_of_memory(loaded, jobs, *args):
        if jobs[0].params.prompt == "too big":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(loaded, jobs, *args)

    monkeypatch.setattr(engine.pipelines.batches, "generate_batch", out_of_memory)
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "dream", prompt="too big", steps=1)
    await wait_until(sim.env, lambda: ephemeral_followups(result))
    assert ephemeral_followups(result) == [
        "❌ The GPU ran out of memory. Try a smaller size or fewer images."
        " Your 1 credit was refunded."
    ]
    [job] = await failed_jobs(sim)
    assert job.error.startswith("The GPU ran out of memory")
    ok = await alice.slash(sim.channel, "dream", prompt="small", steps=1)
    await wait_until(sim.env, lambda: has_result(ok))


async def test_unknown_sampler_is_refused_by_discord_choices(sim):
    import simcord

    alice = sim.member("alice")
    with pytest.raises(simcord.OptionError):
        await alice.slash(sim.channel, "dream", prompt="a cat", sampler="Euler Z")


async def test_model_and_size_autocomplete(sim):
    alice = sim.member("alice")
    models = await alice.autocomplete(sim.channel, "dream", "model", "ti")
    assert [choice["value"] for choice in models] == ["tiny"]
    sizes = await alice.autocomplete(sim.channel, "dream", "size", "", model="tiny")
    values = [choice["value"] for choice in sizes]
    assert values[0] == "64x64"
    for value in values:
        width, height = map(int, value.split("x"))
        assert width * height <= 128 * 128
        assert width % 8 == height % 8 == 0


async def test_results_over_the_upload_limit_are_reencoded_not_dropped(sim, monkeypatch):
    import cogs.ui.rendering

    monkeypatch.setattr(cogs.ui.rendering, "REQUEST_LIMIT", 2 * 4000)  # two files of <= 4 kB
    alice = sim.member("alice")
    result = await alice.slash(
        sim.channel, "dream", prompt="a cat", steps=2, count=2, seed=3, size="128x128"
    )
    await wait_until(sim.env, lambda: has_result(result))
    names = [attachment.filename for attachment in result.response.attachments]
    assert len(names) == 2
    for attachment in result.response.attachments:
        data = await attachment.read()
        assert len(data) <= 4000
        if attachment.filename.endswith(".webp"):
            assert Image.open(io.BytesIO(data)).format == "WEBP"
    assert any(name.endswith(".webp") for name in names)


async def test_progress_edits_are_throttled(sim, monkeypatch):
    sim.bot.settings.progress_interval = 3600.0
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "dream", prompt="a fox", steps=8, seed=5)
    await wait_until(sim.env, lambda: has_result(result))
    contents = [edit.get("content", "") for edit in original_edits(sim.env, result)]
    assert len(contents) == 2, contents
    assert contents[0].startswith("Queued: position 1.")
    assert alice.mention in contents[1]


def posted_for(sim, job_id: int):
    return [m for m in sim.channel.history() if f"job {job_id} finished" in m.content]


async def test_restart_runs_queued_and_crashed_jobs_and_posts_them_as_new_messages(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    queued = await leave_job(sim, alice, "queued", 0)
    crashed_once = await leave_job(sim, bob, "running", 1)
    await sim.restart()
    await wait_until(
        sim.env, lambda: posted_for(sim, queued.id) and posted_for(sim, crashed_once.id)
    )
    [message] = posted_for(sim, crashed_once.id)
    assert message.content.startswith(bob.mention)
    assert message.attachments[0].filename.endswith(".png")
    await sim.bot.scheduler.drain()
    jobs = sim.bot.scheduler.jobs
    assert (await jobs.get(queued.id)).status == "succeeded"
    assert (await jobs.get(crashed_once.id)).attempts == 2
    assert await sim.bot.credits.check() == []


async def test_restart_fails_a_job_that_crashed_twice_and_refunds_it_once(sim):
    alice = sim.member("alice")
    job = await leave_job(sim, alice, "running", 2)
    balance = (await sim.bot.credits.balance(alice.id)).account.balance
    await sim.restart()
    await sim.bot.scheduler.drain()
    done = await sim.bot.scheduler.jobs.get(job.id)
    assert done.status == "failed"
    assert (await sim.bot.credits.balance(alice.id)).account.balance == balance + job.cost
    await sim.restart()  # a second restart refunds nothing more
    assert (await sim.bot.credits.balance(alice.id)).account.balance == balance + job.cost
    assert await sim.bot.credits.check() == []
    dm = alice.dm_channel.last_message if hasattr(alice, "dm_channel") else None
    if dm is not None:
        assert "stopped twice" in dm.content


async def test_only_the_owner_syncs_commands_globally(sim):
    owner = sim.member("owner")
    stranger = sim.member("stranger")
    sim.bot.owner_ids = {owner.id}
    bot_mention = f"<@{sim.bot.user.id}>"
    await stranger.send(sim.channel, f"{bot_mention} sync")
    assert sim.channel.last_message.content == "Only the bot's owner can do that."
    await owner.send(sim.channel, f"{bot_mention} sync")
    assert sim.channel.last_message.content.startswith("Synced ")
    assert sim.channel.last_message.content.endswith(" command(s) globally.")
    await owner.send(sim.channel, f"{bot_mention} sync everywhere")
    assert "Usage: `@bot sync [global|here|clear]`" in sim.channel.last_message.content
    sim.expected_errors()


async def test_variation_clip_skip_and_subprompts_reach_the_image_and_embed(sim):
    alice = sim.member("alice")
    result = await alice.slash(
        sim.channel,
        "dream",
        prompt="cute dog:0.9 cyborg:0.3",
        seed=11,
        steps=2,
        count=2,
        variation_seed=500,
        variation_strength=0.2,
        clip_skip=2,
        syntax="auto",
    )
    await wait_until(sim.env, lambda: has_result(result))
    fields = {f.name: f.value for f in result.response.embeds[0].fields}
    assert fields["Seed"] == "11"
    assert fields["Variation seed"] == "500, 501"
    assert fields["Variation strength"] == "0.2"
    assert fields["Clip skip"] == "2"
    for attachment, variation in zip(result.response.attachments, (500, 501), strict=True):
        params = params_from_infotext(read_png_infotext(await attachment.read()), count=2)
        assert (params.seed, params.variation_seed) == (11, variation)
        assert (params.variation_strength, params.clip_skip) == (0.2, 2)


async def test_a_strength_without_a_seed_picks_a_random_variation_seed(sim):
    alice = sim.member("alice")
    result = await alice.slash(
        sim.channel, "dream", prompt="a cat", steps=1, variation_strength=0.5
    )
    await wait_until(sim.env, lambda: has_result(result))
    fields = {f.name: f.value for f in result.response.embeds[0].fields}
    assert 0 <= int(fields["Variation seed"]) < 2**32

"""/train and /loras through SimCord, and /dream with what was trained (issue 6)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from safetensors.torch import load as safetensors_load

from data.jobs import JobStatus
from engine.api.infotext import parse_infotext
from engine.api.lora_files import a1111_copy
from engine.imaging.images import read_png_infotext
from tests.conftest import wait_until
from tests.discord_helpers import ephemeral_followups, has_result
from tests.factories import photo


@pytest.fixture
def settings(make_settings):
    return make_settings(train_checkpoint_every=3)


def photos(count: int) -> dict[str, tuple[str, bytes]]:
    return {f"image{i + 1}": (f"rex{i}.png", photo(i)) for i in range(count)}


def zipped(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def bot_messages(sim: Any, text: str) -> list[Any]:
    return [m for m in sim.channel.history() if m.author.bot and text in m.content]


async def trained(sim: Any, member: Any, name: str = "rex", **options: Any) -> Any:
    """Train and wait for the done message; returns it."""
    result = await member.slash(
        sim.channel, "train", name=name, class_word="dog", steps=4, **{**photos(3), **options}
    )
    assert not result.ephemeral, result.response.content if result.response else result
    await wait_until(sim.env, lambda: bot_messages(sim, f"**{name}** is ready"))
    await sim.bot.scheduler.drain()
    return bot_messages(sim, f"**{name}** is ready")[-1]


def copy_hash(data: bytes) -> str:
    """A1111's LoRA hash of a file's bytes: the sha256 of what follows its JSON header."""
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()[:12]


def private_answer(result: Any) -> str:
    if result.ephemeral:
        return result.response.content
    return ephemeral_followups(result)[-1]


async def balance(sim: Any, member: Any) -> int:
    return (await sim.bot.dreams.credits.account(member.id)).balance


async def test_train_shows_progress_posts_samples_and_dms_the_owner(sim):
    alice = sim.member("alice")
    before = await balance(sim, alice)
    done = await trained(sim, alice)
    assert alice.mention in done.content
    assert "`/dream prompt: <lora:rex:0.8> a photo of zwxrex dog`" in done.content
    assert [a.filename for a in done.attachments] == ["rex-sample-1.png", "rex-sample-2.png"]
    sample = parse_infotext(read_png_infotext(await done.attachments[0].read()))
    assert "<lora:rex:1>" in sample.prompt
    assert sample.values["Lora hashes"].startswith("rex: ")
    [progress] = bot_messages(sim, "Training **rex** for")
    assert "done in" in progress.content
    [dm] = alice.user.dm_channel.history()
    assert "**rex** is ready" in dm.content
    # The file for A1111, Forge and ComfyUI comes by DM only (it is private), named as
    # A1111 will call it; the samples' infotext names its A1111 hash.
    assert "`rex.safetensors` is attached for A1111, Forge and ComfyUI" in dm.content
    assert [a.filename for a in dm.attachments][-1] == "rex.safetensors"
    assert "rex.safetensors" not in [a.filename for a in done.attachments]
    copy = await dm.attachments[-1].read()
    assert copy_hash(copy) == sample.values["Lora hashes"].removeprefix("rex: ")
    assert all(key.startswith("lora_unet_") for key in safetensors_load(copy))
    assert await balance(sim, alice) < before, "training is priced per step"
    lora = await sim.bot.training.loras.owned(alice.id, "rex")
    assert lora is not None
    assert lora.token == "zwxrex"
    assert lora.metadata  # base model, steps, rank, images... in the file and the row


async def test_a_copy_over_discords_dm_limit_is_not_attached_and_the_dm_says_so(sim, monkeypatch):
    import importlib

    # The module the bot loaded as an extension (discord.py does not bind it on `cogs`).
    monkeypatch.setattr(importlib.import_module("cogs.train"), "DM_FILE_LIMIT", 1024)
    alice = sim.member("alice")
    await trained(sim, alice)
    [dm] = alice.user.dm_channel.history()
    assert "MB limit for a DM, so it is not attached" in dm.content
    assert [a.filename for a in dm.attachments] == ["rex-sample-1.png", "rex-sample-2.png"]


async def test_a_trained_lora_is_private_until_shared(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    await trained(sim, alice)
    mine = await alice.slash(sim.channel, "dream", prompt="a photo of zwxrex dog <lora:rex:1>")
    await wait_until(sim.env, lambda: has_result(mine))
    png = await mine.response.attachments[0].read()
    assert "Lora hashes" in parse_infotext(read_png_infotext(png)).values

    theirs = await bob.slash(sim.channel, "dream", prompt="a dog <lora:rex:1>", steps=1)
    assert "There is no LoRA called 'rex' that you may use" in private_answer(theirs)
    listed = await bob.slash(sim.channel, "loras list")
    assert "rex" not in listed.response.content

    by_option = await alice.slash(sim.channel, "dream", prompt="a dog", lora="rex", steps=1)
    await wait_until(sim.env, lambda: has_result(by_option))
    tagged = parse_infotext(read_png_infotext(await by_option.response.attachments[0].read()))
    assert tagged.prompt == "a dog <lora:rex:0.8>"
    offered = await alice.autocomplete(sim.channel, "dream", "lora", "re", prompt="a dog")
    assert [choice["value"] for choice in offered] == ["rex"]
    assert await bob.autocomplete(sim.channel, "dream", "lora", "", prompt="a dog") == []

    shared = await alice.slash(sim.channel, "loras share", name="rex")
    assert "is shared" in shared.response.content
    again = await bob.slash(sim.channel, "dream", prompt="a dog <lora:rex:0.5>", steps=1)
    await wait_until(sim.env, lambda: has_result(again))
    assert "by <@" in (await bob.slash(sim.channel, "loras list")).response.content


async def test_loras_rename_and_delete(sim):
    alice = sim.member("alice")
    await trained(sim, alice)
    renamed = await alice.slash(sim.channel, "loras rename", name="rex", new_name="Rex Two")
    assert renamed.response.content.startswith("Renamed to **rex-two**")
    old = await alice.slash(sim.channel, "dream", prompt="a dog <lora:rex:1>", steps=1)
    assert "no LoRA called 'rex'" in private_answer(old)
    got = await alice.slash(sim.channel, "loras download", name="rex-two")
    sent = got.response  # the first followup after a deferral replaces "thinking…"
    assert got.ephemeral
    assert sent.content == "`rex-two.safetensors` for A1111, Forge and ComfyUI."
    assert [a.filename for a in sent.attachments] == ["rex-two.safetensors"]
    theirs = await sim.member("bob").slash(sim.channel, "loras download", name="rex-two")
    assert theirs.response.content == "❌ You have no LoRA called rex-two."
    lora = await sim.bot.training.loras.owned(alice.id, "rex-two")
    deleted = await alice.slash(sim.channel, "loras delete", name="rex-two")
    assert deleted.response.content == "Deleted **rex-two**."
    files = [Path(lora.path), a1111_copy(Path(lora.path))]
    assert not any(path.is_file() for path in files), "its A1111 copy went with it"
    missing = await alice.slash(sim.channel, "loras delete", name="rex-two")
    assert missing.response.content == "❌ You have no LoRA called rex-two."


async def test_cancel_button_stops_training_and_refunds(sim):
    alice = sim.member("alice")
    before = await balance(sim, alice)
    await alice.slash(sim.channel, "train", name="slow", class_word="dog", steps=2000, **photos(3))

    def running() -> bool:
        return any("/2000" in m.content for m in bot_messages(sim, "Training **slow** for"))

    await wait_until(sim.env, running)
    [progress] = bot_messages(sim, "Training **slow** for")
    answer = await alice.click(progress, label="Cancel")
    assert "stopping" in answer.response.content
    await wait_until(
        sim.env, lambda: "refunded" in bot_messages(sim, "Training **slow** for")[0].content
    )
    await sim.bot.scheduler.drain()
    assert await balance(sim, alice) == before
    [job] = await sim.bot.scheduler.jobs.with_status(JobStatus.CANCELLED)
    assert job.kind == "train"


async def test_a_restart_mid_training_resumes_from_the_checkpoint(sim):
    alice = sim.member("alice")
    await alice.slash(sim.channel, "train", name="long", class_word="dog", steps=40, **photos(3))
    checkpoint = sim.settings.data_dir / "training"

    await wait_until(sim.env, lambda: any(checkpoint.glob("*/checkpoint.pt")))
    await sim.restart()
    await wait_until(sim.env, lambda: bot_messages(sim, "**long** is ready"))
    [done] = bot_messages(sim, "**long** is ready")
    assert "resumed from step" in done.content
    [job] = await sim.bot.scheduler.jobs.with_status(JobStatus.SUCCEEDED)
    assert job.kind == "train"
    assert job.attempts == 1, "a clean restart does not count as a failed attempt"


@pytest.mark.parametrize(
    ("files", "options", "expected"),
    [
        (photos(2), {}, "Training needs"),
        (
            {**photos(2), "image3": ("notes.png", b"just text")},
            {},
            "notes.png",
        ),
        (
            {"image1": ("set.zip", zipped({"../evil.png": photo(1), "a.png": photo(2)}))},
            {},
            "../evil.png",
        ),
        (
            {"image1": ("bomb.zip", zipped({f"{i}.png": b"\0" * 3_000_000 for i in range(3)}))},
            {},
            "",
        ),
        (photos(3), {"name": "../.."}, "has no letters or digits"),
        (photos(3), {"steps": 99_999}, "Steps must be 1-2000"),
        (photos(3), {"method": "embedding", "class_word": "dog 2"}, "class word"),
    ],
)
async def test_bad_training_requests_are_refused_without_a_charge(sim, files, options, expected):
    alice = sim.member("alice")
    before = await balance(sim, alice)
    request = {"name": "rex", "class_word": "dog", **options, **files}
    result = await alice.slash(sim.channel, "train", **request)
    await wait_until(sim.env, lambda: result.ephemeral or ephemeral_followups(result))
    answer = private_answer(result)
    assert answer.startswith("❌")
    assert expected in answer
    sim.expected_errors()
    assert await sim.bot.scheduler.jobs.with_status(*JobStatus) == []
    assert await balance(sim, alice) == before


async def test_a_duplicate_name_is_refused(sim):
    alice = sim.member("alice")
    await trained(sim, alice)
    again = await alice.slash(sim.channel, "train", name="rex", class_word="dog", **photos(3))
    assert "You already have a LoRA called rex" in private_answer(again)


async def test_a_blocked_member_cannot_train(sim):
    import discord

    role = sim.guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    boss = sim.guild.add_member(sim.env.create_user("boss"), roles=[role])
    alice = sim.member("alice")
    await boss.slash(sim.channel, "settings block", member=alice, reason="spam")
    result = await alice.slash(sim.channel, "train", name="rex", class_word="dog", **photos(3))
    assert private_answer(result) == "❌ You are blocked from using this bot here."
    assert await sim.bot.scheduler.jobs.with_status(*JobStatus) == []


async def test_an_embedding_is_used_by_writing_its_token(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    done = await trained(sim, alice, name="fluff", method="embedding")
    assert "`/dream prompt: a photo of zwxfluff dog`" in done.content
    used = await alice.slash(sim.channel, "dream", prompt="a photo of zwxfluff dog", steps=1)
    await wait_until(sim.env, lambda: has_result(used))
    values = parse_infotext(read_png_infotext(await used.response.attachments[0].read())).values
    assert values["TI hashes"].startswith("zwxfluff: ")
    [dm] = alice.user.dm_channel.history()
    assert dm.attachments[-1].filename == "zwxfluff.safetensors"  # A1111's name is the token
    copy = await dm.attachments[-1].read()
    assert list(safetensors_load(copy)) == ["emb_params"]
    assert values["TI hashes"] == f"zwxfluff: {hashlib.sha256(copy).hexdigest()[:12]}"
    # Someone else's private embedding is just a word to them: no file is applied.
    theirs = await bob.slash(sim.channel, "dream", prompt="a photo of zwxfluff dog", steps=1)
    await wait_until(sim.env, lambda: has_result(theirs))
    png = await theirs.response.attachments[0].read()
    assert "TI hashes" not in parse_infotext(read_png_infotext(png)).values


async def test_queue_shows_a_training_job_by_name(sim):
    alice = sim.member("alice")
    await alice.slash(sim.channel, "train", name="slow", class_word="dog", steps=2000, **photos(3))
    shown = await alice.slash(sim.channel, "queue")
    assert "training slow (lora, 2000 steps)" in shown.response.content
    await alice.slash(sim.channel, "cancel")


async def test_a_reroll_reaction_on_a_training_result_is_answered(sim):
    alice = sim.member("alice")
    done = await trained(sim, alice)
    await alice.react(done, "🔄")
    told = alice.user.dm_channel.history()[-1]
    assert told.content == "❌ That is a training result: use what it learned in /dream."
    assert len(await sim.bot.scheduler.jobs.with_status(*JobStatus)) == 1


class TestSafetyReviewOfSamples:
    @pytest.fixture
    def settings(self, make_settings, tmp_path):
        from engine.pipelines.safety import save_tiny_checker

        checker = save_tiny_checker(tmp_path / "flag-all", flag_everything=True)
        return make_settings(safety_checker=str(checker))

    async def test_flagged_samples_are_blurred_like_any_result(self, sim):
        alice = sim.member("alice")
        done = await trained(sim, alice)
        job = (await sim.bot.scheduler.jobs.with_status(JobStatus.SUCCEEDED))[0]
        stored = await sim.bot.scheduler.jobs.images(job.id)
        posted = await done.attachments[0].read()
        original = __import__("pathlib").Path(stored[0].path).read_bytes()
        assert (
            Image.open(io.BytesIO(posted)).tobytes() != Image.open(io.BytesIO(original)).tobytes()
        )
        assert set((await sim.bot.community.stats_repository.flags(job.id)).values()) == {"blur"}


async def test_a_training_result_can_be_deleted_by_its_owner(sim):
    alice = sim.member("alice")
    done = await trained(sim, alice)
    await alice.react(done, "❌")
    assert done.id not in [m.id for m in sim.channel.history()]


async def test_a_banned_word_in_a_training_name_is_refused(sim):
    import discord

    role = sim.guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    boss = sim.guild.add_member(sim.env.create_user("boss"), roles=[role])
    await boss.slash(sim.channel, "settings words add", entry="gore")
    alice = sim.member("alice")
    result = await alice.slash(
        sim.channel, "train", name="gore-pics", class_word="dog", **photos(3)
    )
    assert private_answer(result) == "❌ This server does not allow gore."
    assert await sim.bot.scheduler.jobs.with_status(*JobStatus) == []


async def test_cancelling_a_queued_training_removes_its_checkpoints(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    await alice.slash(sim.channel, "train", name="slow", class_word="dog", steps=2000, **photos(3))
    await bob.slash(sim.channel, "train", name="later", class_word="cat", steps=4, **photos(3))
    [queued] = await sim.bot.scheduler.jobs.with_status(JobStatus.QUEUED)
    # As a run paused by a shutdown leaves it: checkpoints waiting for the next start.
    workdir = sim.bot.training.workdir(queued.id)
    workdir.mkdir(parents=True)
    (workdir / "checkpoint.pt").write_bytes(b"x")
    cancelled = await bob.slash(sim.channel, "cancel", job=queued.id)
    assert "was cancelled" in cancelled.response.content
    assert not workdir.exists()
    await alice.slash(sim.channel, "cancel")


async def test_a_training_finished_but_not_announced_before_a_crash_is_announced_once(sim):
    alice = sim.member("alice")
    done = await trained(sim, alice)
    job_id = (await sim.bot.training.loras.owned(alice.id, "rex")).job_id
    # As if the bot had died between storing the LoRA and posting that it is ready.
    async with sim.bot.store.transaction() as db:
        await db.execute("UPDATE jobs SET delivered_at = NULL WHERE id = ?", (job_id,))
    await sim.restart()
    await wait_until(sim.env, lambda: len(bot_messages(sim, "**rex** is ready")) == 2)
    await sim.bot.scheduler.drain()
    again = bot_messages(sim, "**rex** is ready")[-1]
    assert again.id != done.id
    assert [a.filename for a in again.attachments] == ["rex-sample-1.png", "rex-sample-2.png"]
    await sim.restart()  # once, not at every start
    await sim.bot.scheduler.drain()
    await sim.env.settle()
    assert len(bot_messages(sim, "**rex** is ready")) == 2

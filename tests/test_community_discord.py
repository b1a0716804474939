"""Running it in a community (issue 8): server settings, rules, presets and content safety,
as members and admins use them through SimCord."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import discord
import pytest
from PIL import Image

from data import JobStatus
from engine.api.params import InvalidParams
from engine.pipelines.safety import save_tiny_checker
from tests.conftest import wait_until
from tests.discord_helpers import ephemeral_followups, has_result


@pytest.fixture(autouse=True)
def only_refusals(sim: Any) -> Any:
    """Bad input is answered by the command tree from InvalidParams (SimCord records each
    one); anything else the bot raised still fails the test."""
    yield
    for error in sim.expected_errors():
        original = getattr(error, "original", error)
        assert isinstance(original, InvalidParams), repr(error)


def admin(sim: Any, name: str = "admin") -> Any:
    role = sim.guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    return sim.guild.add_member(sim.env.create_user(name), roles=[role])


def age_restricted_channel(sim: Any, name: str = "after-dark") -> Any:
    """SimCord does not model the NSFW flag; discord.py reads it from its cached channel,
    which is what the bot sees, so the test marks that."""
    channel = sim.guild.create_text_channel(name)
    sim.bot.get_channel(channel.id).nsfw = True
    return channel


async def dream(sim: Any, member: Any, channel: Any = None, **options: Any) -> Any:
    """A /dream that gets a result; returns the SimCord result."""
    chosen = {"prompt": "a cat", "steps": 1, **options}
    result = await member.slash(
        channel or sim.channel,
        "dream",
        **{key: value for key, value in chosen.items() if value is not None},
    )
    await wait_until(sim.env, lambda: has_result(result) or bool(ephemeral_followups(result)))
    await sim.bot.scheduler.drain()
    return result


async def refused(sim: Any, member: Any, command: str = "dream", **options: Any) -> str:
    """What a command that must be refused told the member (privately); nothing queued."""
    if command == "dream":
        options = {"prompt": "a cat", "steps": 1, **options}
    result = await member.slash(options.pop("channel", sim.channel), command, **options)
    await wait_until(sim.env, lambda: bool(ephemeral_followups(result)) or result.ephemeral)
    texts = ephemeral_followups(result) or [result.response.content]
    return texts[-1]


def answer(result: Any) -> str:
    """What a click was told privately."""
    return ([m.content for m in result.followups] or [result.response.content])[-1]


async def balance(sim: Any, member: Any) -> int:
    return (await sim.bot.dreams.credits.account(member.id)).balance


async def jobs_of(sim: Any, member: Any) -> list[Any]:
    return [
        j for j in await sim.bot.scheduler.jobs.with_status(*JobStatus) if j.user_id == member.id
    ]


def job_params(sim: Any, result: Any) -> dict[str, Any]:
    return result.response.embeds[0].to_dict()


def field(result: Any, name: str) -> str | None:
    for item in result.response.embeds[0].fields:
        if item.name == name:
            return item.value
    return None


async def pixels(attachment: Any) -> bytes:
    return Image.open(io.BytesIO(await attachment.read())).convert("RGB").tobytes()


def stored_pixels(sim: Any, job_id: int) -> bytes:
    [path] = sorted((sim.settings.images_dir / str(job_id)).glob("*.png"))
    return Image.open(path).convert("RGB").tobytes()


def job_id(result: Any) -> int:
    return int(result.response.embeds[0].footer.text.split()[1])


# -- settings: who may change them, and that they apply at once --------------------------


async def test_a_member_cannot_change_settings_and_an_admins_change_applies_next(sim):
    alice = sim.member("alice")
    denied = await alice.slash(sim.channel, "settings limits", steps=5)
    assert denied.ephemeral
    assert denied.response.content.startswith("Only admins")
    boss = admin(sim)
    saved = await boss.slash(sim.channel, "settings limits", steps=5, count=1)
    assert saved.response.content.startswith("Saved. Limits: 5 steps, 1 images per job")

    before = await balance(sim, alice)
    assert await refused(sim, alice, steps=10) == "❌ 10 steps is over this server's limit of 5."
    assert await refused(sim, alice, count=2) == (
        "❌ 2 images is over this server's limit of 1 per job."
    )
    assert await balance(sim, alice) == before
    assert await jobs_of(sim, alice) == []
    # No steps given: the default is kept under the server's limit rather than refused.
    ok = await alice.slash(sim.channel, "dream", prompt="a cat")
    await wait_until(sim.env, lambda: has_result(ok))
    assert field(ok, "Steps") == "5"

    shown = await alice.slash(sim.channel, "settings show")
    assert "Limits: 5 steps, 1 images per job" in shown.response.content
    assert (await boss.slash(sim.channel, "settings limits", reset=True)).response.content == (
        "Saved. Limits: 150 steps, 4 images per job, size each model's own."
    )


async def test_bad_settings_are_refused_with_a_reason(sim):
    boss = admin(sim)

    async def said(command: str, **options: Any) -> str:
        result = await boss.slash(sim.channel, command, **options)
        assert result.ephemeral
        return result.response.content

    assert await said("settings models", allowed="tiny, nope") == (
        "Unknown model(s): nope. Models: tiny."
    )
    assert (await said("settings words add", entry="(unclosed", regex=True)).startswith(
        "That is not a valid pattern: missing )"
    )
    assert "repeats a repeated group" in await said("settings words add", entry="(a+)+", regex=True)
    assert "at most 100" in await said("settings words add", entry="x" * 101)
    assert await said("settings limits", size="12x12") == (
        "Size 12x12: each side must be at least 64."
    )
    assert await said("settings limits") == "Give steps, size or count (or reset)."
    assert await said("settings words remove", entry="never") == "'never' is not banned."
    assert await said("settings unblock", member=sim.member("alice")) == (
        f"{sim.member('alice').mention} is not blocked."
    )
    assert await said("settings block", member=boss) == (
        "Bots, admins and yourself cannot be blocked."
    )
    # Nothing of that was stored.
    policy = await sim.bot.guild_settings.policy(sim.guild.id)
    assert policy == sim.bot.guild_settings.defaults()


# -- banned words ------------------------------------------------------------------------


async def test_a_banned_word_is_refused_before_anything_is_charged(sim):
    boss, alice = admin(sim), sim.member("alice")
    await boss.slash(sim.channel, "settings words add", entry="gore")
    await boss.slash(sim.channel, "settings words add", entry=r"blood\w*", regex=True)
    before = await balance(sim, alice)
    assert await refused(sim, alice, prompt="a cat, GORE") == (
        "❌ This server does not allow gore in prompts."
    )
    assert await refused(sim, alice, prompt="bloody cat") == (
        "❌ This server does not allow /blood\\w*/ in prompts."
    )
    assert await balance(sim, alice) == before
    assert await jobs_of(sim, alice) == []
    # A whole word only: "gorem" is not "gore".
    ok = await dream(sim, alice, prompt="a gorem cat")
    assert has_result(ok)


async def test_banned_words_can_move_to_the_negative_prompt(sim):
    boss, alice = admin(sim), sim.member("alice")
    await boss.slash(sim.channel, "settings words add", entry="gore")
    saved = await boss.slash(sim.channel, "settings words action", action="negative")
    assert saved.response.content == "Saved. Banned words: negative."
    result = await dream(sim, alice, prompt="a cat, (gore:1.3), sunset", negative="blurry")
    embed = result.response.embeds[0]
    assert embed.description == "a cat, sunset"
    assert field(result, "Negative") == "blurry, gore"
    assert "Moved to the negative prompt by this server's rules: gore." in field(result, "Note")
    only = await refused(sim, alice, prompt="gore")
    assert only == "❌ Nothing is left of the prompt without this server's banned words."


# -- the blocklist, cooldowns, channels, models, roles ------------------------------------


async def test_a_blocked_member_is_told_so_and_nothing_else_happens(sim):
    boss, alice = admin(sim), sim.member("alice")
    earlier = await dream(sim, alice)
    blocked = await boss.slash(sim.channel, "settings block", member=alice, reason="spam")
    assert blocked.response.content.startswith("Saved. ")
    before = await balance(sim, alice)
    assert await refused(sim, alice) == "❌ You are blocked from using this bot here."
    click = await alice.click(earlier.response, label="Reroll")
    assert answer(click) == "❌ You are blocked from using this bot here."
    assert await balance(sim, alice) == before
    assert len(await jobs_of(sim, alice)) == 1
    await boss.slash(sim.channel, "settings unblock", member=alice)
    assert has_result(await dream(sim, alice))


async def test_a_cooldown_holds_between_jobs_and_buttons(sim):
    boss, alice = admin(sim), sim.member("alice")
    await boss.slash(sim.channel, "settings cooldown", command="dream", seconds=3600)
    first = await dream(sim, alice)
    text = await refused(sim, alice)
    assert text.startswith("❌ Slow down: your next dream here can start in ")
    assert text.endswith("(this server's cooldown is 3600s).")
    click = await alice.click(first.response, label="Reroll")
    assert answer(click).startswith("❌ Slow down")
    # Admins are not held by cooldowns; other kinds of job have their own.
    assert has_result(await dream(sim, boss))
    assert has_result(await dream(sim, boss))


async def test_the_bot_can_be_kept_to_age_restricted_or_listed_channels(sim):
    boss, alice = admin(sim), sim.member("alice")
    await boss.slash(sim.channel, "settings channels", where="age_restricted")
    assert await refused(sim, alice) == (
        "❌ On this server the bot works only in channels marked age-restricted."
    )
    nsfw = age_restricted_channel(sim)
    assert has_result(await dream(sim, alice, nsfw))

    await boss.slash(sim.channel, "settings channels", where="listed")
    assert await refused(sim, alice) == (
        "❌ The bot is not enabled in any channel of this server yet."
    )
    listed = await boss.slash(sim.channel, "settings channel", channel=sim.channel, action="add")
    assert listed.response.content == f"Saved. Listed channels: <#{sim.channel.id}>."
    assert has_result(await dream(sim, alice))
    assert await refused(sim, alice, channel=nsfw) == (
        f"❌ The bot does not work in this channel; try <#{sim.channel.id}>."
    )


class TestTwoModels:
    @pytest.fixture
    def settings(self, make_settings, tiny_sd1):
        model = {"source": str(tiny_sd1), "default_size": (64, 64), "max_pixels": 128 * 128}
        return make_settings(
            models={"tiny": {**model, "note": "tiny random SD1"}, "other": model},
        )

    async def test_allowed_models_default_model_and_models_command(self, sim):
        boss, alice = admin(sim), sim.member("alice")
        listed = await alice.slash(sim.channel, "models")
        assert listed.ephemeral
        assert listed.response.content == (
            "**other**, 64x64\n**tiny** (default), 64x64: tiny random SD1"
        )
        saved = await boss.slash(sim.channel, "settings models", allowed="other")
        assert saved.response.content == "Saved. Models: other; default other."
        assert await refused(sim, alice, model="tiny") == (
            "❌ Model tiny is not allowed here. Models: other."
        )
        result = await dream(sim, alice)  # no model given: the server's default
        assert field(result, "Model") == "other"
        assert (await alice.slash(sim.channel, "models")).response.content == (
            "**other** (default), 64x64"
        )
        denied = await boss.slash(sim.channel, "settings defaults", model="tiny")
        assert denied.response.content == "Model tiny is not among this server's allowed models."


async def test_a_role_lifts_caps_and_lowers_prices(sim):
    boss = admin(sim)
    patrons = sim.guild.create_role("Patrons")
    pat = sim.guild.add_member(sim.env.create_user("pat"), roles=[patrons])
    alice = sim.member("alice")
    await boss.slash(sim.channel, "settings limits", steps=2)
    await boss.slash(sim.channel, "settings price", per_image=64.0)  # 64x64, 20 steps: 1 credit
    saved = await boss.slash(sim.channel, "settings role", role=patrons, steps=40, price_factor=0.5)
    assert saved.response.content == f"Saved. <@&{patrons.id}>: 40 steps, price x0.5."
    assert await refused(sim, alice, steps=40) == "❌ 40 steps is over this server's limit of 2."
    result = await dream(sim, pat, steps=40)
    assert field(result, "Steps") == "40"
    # 64 per standard image x (1/64 of the pixels) x (40/20 steps) x 0.5 = 1 credit.
    assert result.response.embeds[0].footer.text.endswith("cost 1 credit · balance 49")
    plain = await dream(sim, alice, steps=2)
    assert "cost 1 credit" in plain.response.embeds[0].footer.text
    # /price quotes what a job here would be charged: the server's price, the member's role.
    quoted = await alice.slash(sim.channel, "price", steps=40, size="128x128")
    assert "costs 8 credits" in quoted.response.content  # 64 x 1/16 x 2
    quoted = await pat.slash(sim.channel, "price", steps=40, size="128x128")
    assert "costs 4 credits" in quoted.response.content
    await boss.slash(sim.channel, "settings role", role=patrons, clear=True)
    assert await refused(sim, pat, steps=40) == "❌ 40 steps is over this server's limit of 2."


async def test_stats_are_for_admins_of_the_server(sim):
    boss, alice = admin(sim), sim.member("alice")
    await dream(sim, alice, count=2)
    denied = await alice.slash(sim.channel, "stats")
    assert denied.response.content == "Only admins (Manage Server) can see this server's stats."
    shown = await boss.slash(sim.channel, "stats")
    assert shown.ephemeral
    text = shown.response.content
    assert text.startswith("**Last 7 day(s)**: 2 image(s) from 1 job(s).")
    assert f"Top members: <@{alice.id}> 2." in text
    assert "Failed 0, cancelled 0, flagged by the safety filter 0 image(s)." in text


# -- per-member defaults and presets ------------------------------------------------------


async def test_preferences_and_presets_apply_and_explicit_options_win(sim):
    alice = sim.member("alice")
    set_steps = await alice.slash(sim.channel, "prefer set", option="steps", value="3")
    assert set_steps.ephemeral
    assert set_steps.response.content == "Saved. Your defaults: 3 steps."
    await alice.slash(sim.channel, "prefer set", option="negative", value="text, watermark")
    result = await dream(sim, alice, steps=None)
    assert field(result, "Steps") == "3"
    assert field(result, "Negative") == "text, watermark"

    saved = await alice.slash(
        sim.channel, "prefer preset save", name="Fast", steps=1, sampler="Euler"
    )
    assert saved.response.content.startswith(
        "Saved preset `fast`: sampler Euler, 1 steps, negative “text, watermark”."
    )
    preset = await dream(sim, alice, steps=None, preset="fast")
    assert (field(preset, "Steps"), field(preset, "Sampler")) == ("1", "Euler")
    explicit = await dream(sim, alice, steps=2, negative="", preset="fast")
    assert (field(explicit, "Steps"), field(explicit, "Negative")) == ("2", None)

    shown = await alice.slash(sim.channel, "prefer show")
    assert "Preset `fast`: sampler Euler, 1 steps" in shown.response.content
    cleared = await alice.slash(sim.channel, "prefer clear")
    assert cleared.response.content == "Cleared. Your defaults: nothing set."


async def test_bad_preferences_and_presets_are_refused(sim):
    alice = sim.member("alice")

    async def said(command: str, **options: Any) -> str:
        result = await alice.slash(sim.channel, command, **options)
        return (ephemeral_followups(result) or [result.response.content])[-1]

    assert await said("dream", prompt="a cat", preset="nope") == (
        "You have no preset called 'nope'. You have none yet."
    )
    assert await said("prefer preset save", name="x" * 40, steps=2) == (
        "Preset names are at most 32 characters; that one has 40."
    )
    assert await said("prefer preset save", name="no spaces", steps=2) == (
        "Preset names use letters, digits, - and _ only, and start with a letter or digit."
    )
    assert await said("prefer preset save", name="empty") == (
        "That preset would hold nothing: set defaults with /prefer set, or give options."
    )
    assert await said("prefer set", option="steps", value="lots") == (
        "Steps must be a whole number 1-150."
    )
    assert await said("prefer set", option="model", value="sdxl") == (
        "Unknown model 'sdxl'. Models: tiny."
    )
    assert (await said("prefer set", option="size", value="4096x4096")).startswith(
        "Size 4096x4096 is 16,777,216 pixels"
    )
    assert await said("prefer set", option="dm", value="maybe") == "Results by DM is yes or no."
    assert await said("prefer preset delete", name="ghost") == (
        "You have no preset called 'ghost'."
    )
    assert await sim.bot.prefs.defaults(alice.id) == type(await sim.bot.prefs.defaults(0))()
    assert await jobs_of(sim, alice) == []


async def test_results_by_dm_go_to_the_members_dms(sim):
    alice = sim.member("alice")
    await alice.slash(sim.channel, "prefer set", option="dm", value="yes")
    result = await alice.slash(sim.channel, "dream", prompt="a cat", steps=1)
    dm = alice.user.dm_channel
    await wait_until(sim.env, lambda: dm is not None and dm.last_message is not None)
    await sim.bot.scheduler.drain()
    message = alice.user.dm_channel.last_message
    assert message.embeds
    assert message.attachments
    assert "sent to your DMs" in result.response.content


# -- content safety ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flag_all(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checker(tmp_path_factory.mktemp("checkers") / "all", flag_everything=True)


@pytest.fixture(scope="module")
def flag_none(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checker(tmp_path_factory.mktemp("checkers") / "none", flag_everything=False)


class TestFlaggedImages:
    @pytest.fixture
    def settings(self, make_settings, flag_all):
        return make_settings(safety_checker=str(flag_all))

    async def test_blurred_in_an_ordinary_channel_and_recorded(self, sim):
        alice = sim.member("alice")
        result = await dream(sim, alice, seed=3)
        job = job_id(result)
        posted = await pixels(result.response.attachments[0])
        assert posted != stored_pixels(sim, job), "the posted copy is blurred"
        assert await sim.bot.community.stats_repository.flags(job) == {0: "blur"}

    async def test_the_envelope_reaction_does_not_undo_the_blur(self, sim):
        alice, bob = sim.member("alice"), sim.member("bob")
        result = await dream(sim, alice)
        await bob.react(result.response, "✉️")
        await sim.env.settle()
        [dm] = bob.user.dm_channel.history()
        assert dm.content == "❌ The safety filter flagged this result; it cannot be sent on."
        assert dm.attachments == []

    async def test_posted_as_is_in_an_age_restricted_channel(self, sim):
        alice = sim.member("alice")
        result = await dream(sim, alice, age_restricted_channel(sim), seed=3)
        job = job_id(result)
        assert await pixels(result.response.attachments[0]) == stored_pixels(sim, job)
        assert not result.response.attachments[0].filename.startswith("SPOILER_")
        assert await sim.bot.community.stats_repository.flags(job) == {0: "posted"}

    async def test_spoiler_when_the_server_chooses_it(self, sim):
        boss, alice = admin(sim), sim.member("alice")
        await boss.slash(sim.channel, "settings safety", action="spoiler")
        result = await dream(sim, alice)
        [attachment] = result.response.attachments
        assert attachment.filename.startswith("SPOILER_")
        assert await pixels(attachment) == stored_pixels(sim, job_id(result))

    async def test_refused_when_the_server_chooses_it_and_refunded(self, sim):
        boss, alice = admin(sim), sim.member("alice")
        await boss.slash(sim.channel, "settings safety", action="refuse")
        before = await balance(sim, alice)
        result = await dream(sim, alice, count=2)
        assert not has_result(result)
        assert ephemeral_followups(result) == [
            "❌ The safety filter flagged 2 of the 2 image(s), so this result is not posted "
            "here. Your 1 credit was refunded."
        ]
        assert await balance(sim, alice) == before
        [job] = await jobs_of(sim, alice)
        assert job.status is JobStatus.FAILED
        assert await sim.bot.community.stats_repository.flags(job.id) == {0: "refuse", 1: "refuse"}
        stats = await boss.slash(sim.channel, "stats")
        assert "Failed 1, cancelled 0, flagged by the safety filter 2 image(s)." in (
            stats.response.content
        )


class TestCleanImages:
    @pytest.fixture
    def settings(self, make_settings, flag_none):
        return make_settings(safety_checker=str(flag_none))

    async def test_an_unflagged_image_is_posted_as_it_is(self, sim):
        alice = sim.member("alice")
        result = await dream(sim, alice)
        job = job_id(result)
        assert await pixels(result.response.attachments[0]) == stored_pixels(sim, job)
        assert await sim.bot.community.stats_repository.flags(job) == {}


class TestMissingChecker:
    @pytest.fixture
    def settings(self, make_settings, tmp_path):
        return make_settings(safety_checker=str(tmp_path / "no-such-checker"))

    async def test_a_checker_that_cannot_load_withholds_and_refunds(self, sim):
        alice = sim.member("alice")
        before = await balance(sim, alice)
        result = await dream(sim, alice)
        assert ephemeral_followups(result) == [
            "❌ The safety check could not run, so the images were not posted. "
            "Your 1 credit was refunded."
        ]
        assert await balance(sim, alice) == before


async def test_the_servers_top_up_applies_to_members_using_the_bot_there(sim):
    boss, alice = admin(sim), sim.member("alice")
    saved = await boss.slash(sim.channel, "settings topup", amount=30, ceiling=100, hours=1.0)
    assert saved.response.content == "Saved. Top-up: 30 credits every 1 h, up to 100."
    shown = await boss.slash(sim.channel, "settings show")
    assert "Top-up: 30 credits every 1 h, up to 100." in shown.response.content
    await dream(sim, alice)
    credits = sim.bot.dreams.credits
    assert (await credits.account(alice.id)).balance == 49
    async with sim.bot.store.transaction() as db:  # two hours pass
        await db.execute(
            "UPDATE accounts SET topped_up_at = topped_up_at - 7200 WHERE user_id = ?",
            (alice.id,),
        )
    await dream(sim, alice)
    assert (await credits.account(alice.id)).balance == 49 + 30 - 1
    denied = await alice.slash(sim.channel, "settings topup", amount=1000, ceiling=1000, hours=1.0)
    assert denied.response.content.startswith("Only admins")


async def test_reading_a_balance_never_applies_the_bots_top_up_over_the_servers(sim):
    boss, alice = admin(sim), sim.member("alice")
    await boss.slash(sim.channel, "settings topup", amount=0, ceiling=0, hours=720.0)
    await dream(sim, alice)
    async with sim.bot.store.transaction() as db:  # a day passes: the bot's own would pay
        await db.execute(
            "UPDATE accounts SET topped_up_at = topped_up_at - 90000 WHERE user_id = ?",
            (alice.id,),
        )
    shown = await alice.slash(sim.channel, "balance")
    assert "49" in shown.response.content
    await dream(sim, alice)
    assert await sim.bot.dreams.credits.balance(alice.id) == 48


async def test_workers_shows_an_admin_the_bots_engine_and_refuses_a_member(sim):
    boss, alice = admin(sim), sim.member("alice")
    refused_here = await alice.slash(sim.channel, "workers")
    assert refused_here.ephemeral
    assert refused_here.response.content == "Only the bot's admins can see its GPUs."
    await dream(sim, alice)
    shown = await boss.slash(sim.channel, "workers")
    assert shown.ephemeral
    line = shown.response.content
    assert line.startswith("**the bot's engine thread**: idle; tiny; ")
    assert " served, " in line
    assert line.endswith(" s per batch")

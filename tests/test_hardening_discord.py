"""Issue 14 as a hostile member and an unlucky owner meet it, through SimCord: nobody sees or
uses what is not theirs, nobody is pinged who was not asked for, numbers members type are
bounded with a clear answer, an interaction delivered twice is answered once, and a refusal
reaches a member whose DMs are closed without quoting them in the channel."""

from __future__ import annotations

from typing import Any

import discord
import pytest

from bot.client.app import UNKNOWN_BUTTON
from bot.client.replies import CHANNEL_FALLBACK, RecentInteractions, mention_only
from bot.generation.results import NOT_YOURS
from cogs.ui.buttons import NO_SUCH_BUTTON
from data.jobs import JobStatus
from engine.api.prompt_syntax import MAX_PROMPT_WEIGHT
from tests.conftest import wait_until
from tests.discord_helpers import ephemeral_followups, has_result

OTHER_GUILD = 515151515151515151
ACTIONS = ("info", "reroll", "vary", "strong", "upscale", "edit", "delete")


async def dream(sim: Any, member: Any, channel: Any = None, **options: Any) -> Any:
    result = await member.slash(
        channel or sim.channel, "dream", **{"prompt": "a cat", "steps": 1, **options}
    )
    await wait_until(sim.env, lambda: has_result(result))
    await sim.bot.scheduler.drain()
    return result


def job_of(message: Any) -> int:
    return int(message.embeds[0].footer.text.split()[1])


async def note_with_button(sim: Any, channel: Any, custom_id: str) -> Any:
    """A message of the bot's own in `channel` under one button carrying `custom_id`: what a
    member meets when a button names a job that is not theirs (or nothing at all)."""
    view = discord.ui.View(timeout=None)
    view.add_item(discord.ui.Button(label="Press", custom_id=custom_id))
    return await sim.bot.get_channel(channel.id).send("A button", view=view)


async def press(sim: Any, member: Any, channel: Any, custom_id: str) -> Any:
    note = await note_with_button(sim, channel, custom_id)
    clicked = await member.click(note, custom_id=custom_id)
    await sim.env.settle()
    return clicked


def answer(result: Any) -> str:
    """What the member alone was told: the ephemeral response or followup."""
    if result.response is not None and result.response.flags.ephemeral and result.response.content:
        return str(result.response.content)
    followups = ephemeral_followups(result)
    assert followups, f"no private answer: {result}"
    return followups[-1]


def custom_id(action: str, job: int) -> str:
    return f"sd:{action}:{job}" + (":0" if action in ("vary", "strong", "upscale") else "")


async def job_count(sim: Any) -> int:
    return len(await sim.bot.scheduler.jobs.with_status(*JobStatus))


async def balance(sim: Any, member: Any) -> int:
    return (await sim.bot.dreams.credits.balance(member.id)) or 0


def other_server(sim: Any) -> tuple[Any, Any]:
    guild = sim.env.create_guild(id=OTHER_GUILD)
    return guild, guild.create_text_channel("elsewhere")


# -- 1. authorization on every button --------------------------------------------------


@pytest.mark.parametrize("action", ACTIONS)
async def test_no_button_acts_on_another_servers_result(sim, action):
    alice = sim.member("alice")
    result = await dream(sim, alice, prompt="alice's secret prompt")
    job = job_of(result.response)
    guild, channel = other_server(sim)
    mallory = guild.add_member(sim.env.create_user("mallory"))
    jobs_before, charged_before = await job_count(sim), await balance(sim, mallory)

    # In mallory's own server, a button naming alice's job.
    refused = await press(sim, mallory, channel, custom_id(action, job))

    assert answer(refused) == f"❌ {NOT_YOURS}"
    assert "secret" not in str(refused.response) + " ".join(ephemeral_followups(refused))
    assert await job_count(sim) == jobs_before, "no job was started"
    assert await balance(sim, mallory) == charged_before
    stored = await sim.bot.scheduler.jobs.get(job)
    assert stored.deleted_at is None
    assert result.response.id in [m.id for m in sim.channel.history()]


async def test_info_of_a_result_in_another_channel_is_refused_and_in_its_own_shown(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    result = await dream(sim, alice, prompt="a lighthouse at dusk")
    job = job_of(result.response)
    backroom = sim.guild.create_text_channel("backroom")

    elsewhere = await press(sim, bob, backroom, f"sd:info:{job}")
    assert answer(elsewhere) == f"❌ {NOT_YOURS}"

    here = await bob.click(result.response, label="Info")
    assert "lighthouse" in answer(here), "a result posted for all is readable where it is"


async def test_a_result_delivered_by_dm_is_private_even_to_admins(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    role = sim.guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    admin = sim.guild.add_member(sim.env.create_user("admin"), roles=[role])
    await alice.slash(sim.channel, "prefer set", option="dm", value="yes")
    await alice.slash(sim.channel, "dream", prompt="my private idea", steps=1)
    dm = alice.user.dm_channel
    await wait_until(sim.env, lambda: dm is not None and dm.last_message is not None)
    await sim.bot.scheduler.drain()
    delivered = alice.user.dm_channel.last_message
    job = job_of(delivered)
    assert (await sim.bot.scheduler.jobs.get(job)).private

    for someone in (bob, admin):
        for action in ("info", "reroll", "delete"):
            refused = await press(sim, someone, sim.channel, custom_id(action, job))
            assert answer(refused) == f"❌ {NOT_YOURS}", (someone.name, action)
    mine = await alice.user.click(delivered, label="Info")
    assert "my private idea" in answer(mine)
    assert (await sim.bot.scheduler.jobs.get(job)).deleted_at is None


# -- 2. mentions ------------------------------------------------------------------------


def pings(sim: Any, message: Any, channel: Any = None) -> tuple[list[int], list[int], bool]:
    """Whom Discord would notify for this message: users, roles, and @everyone/@here."""
    stored = sim.env.backend.get_message((channel or sim.channel).id, message.id)
    return list(stored.ping_user_ids), list(stored.ping_role_ids), bool(stored.mention_everyone)


async def test_a_prompt_full_of_mentions_pings_only_its_requester(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    role = sim.guild.create_role("Everyone-ish")
    prompt = f"@everyone @here <@&{role.id}> <@{bob.id}> a cat"
    result = await dream(sim, alice, prompt=prompt)
    assert pings(sim, result.response) == ([alice.id], [], False)

    reroll = await alice.click(result.response, label="Reroll")
    assert reroll.acknowledged
    await wait_until(sim.env, lambda: any(m.embeds for m in replies(sim, result.response)))
    await sim.bot.scheduler.drain()
    for reply in replies(sim, result.response):
        users, roles, everyone = pings(sim, reply)
        assert set(users) <= {alice.id}
        assert (roles, everyone) == ([], False)


def replies(sim: Any, message: Any) -> list[Any]:
    return [
        m
        for m in sim.channel.history()
        if m.reference is not None and m.reference.message_id == message.id
    ]


def test_mention_only_allows_exactly_one_member():
    allowed = mention_only(1234)
    assert allowed.to_dict() == {"parse": [], "users": [1234]}
    assert allowed.replied_user is False


# -- 5. a refusal reaches a member whose DMs are closed ---------------------------------


async def test_a_refused_reaction_with_closed_dms_is_said_in_the_channel_quoting_nothing(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    result = await dream(sim, alice)
    channel_before = len(sim.channel.history())
    # Bob's DMs are closed: the one DM the refusal tries fails as Discord fails it.
    sim.env.inject_error(
        "POST", "/channels/*/messages", status=403, code=50007, message="Cannot send", times=1
    )
    await bob.react(result.response, "🔄")
    await sim.env.settle()

    said = sim.channel.history()[channel_before:]
    [told] = [m for m in said if m.content.startswith(bob.mention)]
    assert told.content == f"{bob.mention} {CHANNEL_FALLBACK}"
    assert alice.mention not in told.content, "the refusal named alice; the channel must not"
    assert pings(sim, told) == ([bob.id], [], False)
    assert await job_count(sim) == 1


# -- 3. numbers members type ------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "syntax"),
    [
        ("a (cat:" + "9" * 400 + ") on a mat", "a1111"),
        ("a (cat:11)", "a1111"),
        ("cute dog:" + "9" * 400 + " cyborg:0.5", "subprompt"),
    ],
)
async def test_a_prompt_weight_out_of_bounds_is_refused_before_any_charge(sim, prompt, syntax):
    alice = sim.member("alice")
    before = await balance(sim, alice)
    result = await alice.slash(sim.channel, "dream", prompt=prompt, syntax=syntax, steps=1)
    await sim.env.settle()
    text = answer(result)
    assert f"must be a number between -{MAX_PROMPT_WEIGHT:g} and {MAX_PROMPT_WEIGHT:g}" in text
    assert len(text) < 200
    assert await job_count(sim) == 0
    assert await balance(sim, alice) == before
    assert [type(e.__cause__ or e).__name__ for e in sim.expected_errors()] == ["InvalidParams"]


@pytest.mark.parametrize("typed", ["²", "٣٠", "1e3", "-5", "99999999999999999999999"])
async def test_preference_steps_take_plain_digits_in_range(sim, typed):
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "prefer set", option="steps", value=typed)
    assert answer(result) == "Steps must be a whole number 1-150."
    assert len(sim.expected_errors()) == 1, "answered by the tree, as every InvalidParams"


@pytest.mark.parametrize(
    ("forged", "expected"),
    [
        ("sd:info:99999999999999999999", NO_SUCH_BUTTON),  # past SQLite's 64-bit range
        ("sd:reroll:0", NO_SUCH_BUTTON),
        ("sd:traincancel:99999999999999999999", NO_SUCH_BUTTON),
        ("sd:explode:12", UNKNOWN_BUTTON),  # matches no button of ours
        ("sd:info:١٢", UNKNOWN_BUTTON),  # Arabic-Indic digits: no pattern takes them
    ],
)
async def test_a_forged_custom_id_gets_a_clear_answer(sim, forged, expected):
    """Custom ids come from anyone who can craft a message's buttons."""
    mallory = sim.member("mallory")
    clicked = await press(sim, mallory, sim.channel, forged)
    assert answer(clicked) == f"❌ {expected}"


# -- 4. an interaction Discord delivers twice -------------------------------------------


def recording(sim: Any, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every INTERACTION_CREATE SimCord sends the bot, to send one again as a resume does."""
    sent: list[dict[str, Any]] = []
    backend = sim.env.backend
    emit = backend.emit

    def keep(event: str, payload: Any) -> None:
        if event == "INTERACTION_CREATE":
            sent.append(payload)
        emit(event, payload)

    monkeypatch.setattr(backend, "emit", keep)
    return sent


async def redeliver(sim: Any, payload: dict[str, Any]) -> None:
    sim.env.backend.emit("INTERACTION_CREATE", payload)
    await sim.env.settle()


async def test_a_command_delivered_twice_runs_and_charges_once_without_errors(sim, monkeypatch):
    alice = sim.member("alice")
    sent = recording(sim, monkeypatch)
    await dream(sim, alice)
    charged = await balance(sim, alice)
    callbacks = [r for r in sim.env.http_requests if r.path.endswith("/callback")]

    await redeliver(sim, sent[-1])
    await sim.bot.scheduler.drain()

    assert [r for r in sim.env.http_requests if r.path.endswith("/callback")] == callbacks
    assert await job_count(sim) == 1
    assert await balance(sim, alice) == charged
    # The fixture fails the test on any error the bot logged (no 40060 among them).


async def test_a_click_delivered_twice_is_answered_once(sim, monkeypatch):
    alice = sim.member("alice")
    result = await dream(sim, alice)
    sent = recording(sim, monkeypatch)
    info = await alice.click(result.response, label="Info")
    assert "a cat" in answer(info)
    callbacks = [r for r in sim.env.http_requests if r.path.endswith("/callback")]

    await redeliver(sim, sent[-1])

    assert [r for r in sim.env.http_requests if r.path.endswith("/callback")] == callbacks


def test_recent_interactions_forget_the_oldest_past_their_capacity():
    recent = RecentInteractions(capacity=2)
    assert recent.first_delivery(1)
    assert recent.first_delivery(2)
    assert not recent.first_delivery(1)
    assert recent.first_delivery(3)  # 1 is forgotten now
    assert recent.first_delivery(1)

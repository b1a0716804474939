"""Credits, the fair queue, /queue and /cancel, as members and admins use them (SimCord)."""

from __future__ import annotations

import discord
import pytest

from data import JobStatus
from tests.conftest import wait_until
from tests.discord_helpers import ephemeral_followups, has_result, leave_job


def admin(sim, name: str = "admin"):
    role = sim.guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    return sim.guild.add_member(sim.env.create_user(name), roles=[role])


async def test_balance_is_ephemeral_and_shows_topup_and_price(sim):
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "balance")
    assert result.ephemeral
    assert result.response.content.startswith("You have **50** credits.")
    assert "A standard image (512x512, 20 steps) costs 1." in result.response.content


async def test_balance_and_help_by_dm(sim):
    alice = sim.member("alice")
    await alice.user.send_dm("balance")
    dm = alice.user.dm_channel
    assert dm.last_message.content.startswith("You have **50** credits.")
    await alice.user.send_dm("help")
    assert "`balance`" in dm.last_message.content
    await alice.user.send_dm("gimme credits")
    assert dm.last_message.content.startswith("I did not understand that.")


async def test_a_dream_is_charged_and_the_footer_shows_the_balance(sim):
    # 64x64 is 1/64 of a standard image; 40 steps x2; 2 images: 6.25 units -> 7 credits.
    sim.bot.dreams.settings.price_per_image = 100.0
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "dream", prompt="a cat", steps=40, count=2)
    await wait_until(sim.env, lambda: has_result(result))
    assert result.response.embeds[0].footer.text.endswith("cost 7 credits · balance 43")
    history = await alice.slash(sim.channel, "credits history")
    lines = history.response.content.splitlines()
    assert "`-7` charge job" in lines[0]
    assert "`+50` grant (welcome)" in lines[1]


async def test_too_few_credits_is_refused_before_anything_runs(sim):
    sim.bot.dreams.settings.price_per_image = 30 * 64.0  # 30 credits for a 64x64 image
    alice = sim.member("alice")
    ok = await alice.slash(sim.channel, "dream", prompt="a cat", steps=20)
    await wait_until(sim.env, lambda: has_result(ok))
    refused = await alice.slash(sim.channel, "dream", prompt="a cat", steps=20)
    await wait_until(sim.env, lambda: ephemeral_followups(refused))
    assert ephemeral_followups(refused) == ["❌ This costs 30 credits and you have 20."]
    assert len(await sim.bot.scheduler.jobs.with_status(*JobStatus)) == 1
    assert await sim.bot.credits.check() == []


@pytest.fixture
def settings(make_settings):
    return make_settings(max_pending_per_member=2)


async def test_queue_cap_cancel_and_refund(sim):
    alice, bob = sim.member("alice"), sim.member("bob")
    long = await bob.slash(sim.channel, "dream", prompt="slow", steps=150)  # keeps the engine busy
    first = await alice.slash(sim.channel, "dream", prompt="one", steps=20)
    second = await alice.slash(sim.channel, "dream", prompt="two", steps=20)
    third = await alice.slash(sim.channel, "dream", prompt="three", steps=20)
    await wait_until(sim.env, lambda: ephemeral_followups(third))
    assert (
        "You already have 2 job(s) waiting or running (the limit is 2)"
        in (ephemeral_followups(third)[0])
    )
    queue = await alice.slash(sim.channel, "queue")
    assert queue.ephemeral
    text = queue.response.content
    assert "#2" in text
    assert "#3" in text
    assert "Running now:" in text

    jobs = sim.bot.scheduler.jobs
    [job_two] = [j for j in await jobs.pending_for(alice.id) if j.params["prompt"] == "two"]
    stranger = await bob.slash(sim.channel, "cancel", job=job_two.id)
    assert stranger.response.content == f"Job {job_two.id} is not yours to cancel."
    cancelled = await alice.slash(sim.channel, "cancel", job=job_two.id)
    assert cancelled.response.content == f"Job {job_two.id} was cancelled. 1 credit(s) refunded."
    await wait_until(sim.env, lambda: ephemeral_followups(second))
    assert ephemeral_followups(second) == ["❌ Cancelled. Your 1 credit was refunded."]

    [running] = await jobs.with_status(JobStatus.RUNNING)
    boss = admin(sim)
    stop = await boss.slash(sim.channel, "cancel", job=running.id)
    assert stop.response.content.startswith(f"Job {running.id} is stopping")
    await wait_until(sim.env, lambda: ephemeral_followups(long))
    assert ephemeral_followups(long)[0].startswith("❌ Cancelled. Your ")
    await wait_until(sim.env, lambda: has_result(first))
    again = await alice.slash(sim.channel, "cancel", job=job_two.id)
    assert again.response.content == f"Job {job_two.id} has already cancelled; nothing to cancel."
    await sim.bot.scheduler.drain()
    assert await sim.bot.credits.check() == []


async def test_admin_credit_commands_and_their_bad_inputs(sim):
    alice = sim.member("alice")
    boss = admin(sim)
    refused = await alice.slash(sim.channel, "credits grant", member=boss, amount=5)
    assert refused.response.content == "Only admins (Manage Server) can do that."
    granted = await boss.slash(
        sim.channel, "credits grant", member=alice, amount=25, reason="contest winner"
    )
    assert granted.ephemeral
    assert granted.response.content.endswith("they now have 75.")
    robot = sim.guild.add_member(sim.env.create_user("robot", bot=True))
    to_bot = await boss.slash(sim.channel, "credits grant", member=robot, amount=5)
    assert to_bot.response.content == "Bots do not use credits."
    import simcord

    with pytest.raises(simcord.OptionError):
        await boss.slash(sim.channel, "credits grant", member=alice, amount=0)
    with pytest.raises(simcord.OptionError):
        await boss.slash(sim.channel, "credits grant", member=alice, amount=10**7)
    set_to = await boss.slash(sim.channel, "credits set", member=alice, balance=3)
    assert set_to.response.content == f"{alice.mention} now has 3 credits."
    top = await boss.slash(sim.channel, "credits top")
    fields = {f.name: f.value for f in top.response.embeds[0].fields}
    assert fields["Largest balances"].splitlines()[0].startswith("<@")
    assert await sim.bot.credits.check() == []


async def test_restart_failure_is_told_in_the_channel_when_dms_are_closed(sim):
    alice = sim.member("alice")
    job = await leave_job(sim, alice, "running", 2)
    sim.env.inject_error(
        "POST",
        "/channels/*/messages",
        status=403,
        code=50007,
        message="Cannot send messages to this user",
        times=1,
    )
    await sim.restart()
    await wait_until(
        sim.env,
        lambda: (
            "could not be finished"
            in (sim.channel.last_message.content if sim.channel.last_message else "")
        ),
    )
    # The channel reads the job and the refund, not why (a reason may quote the prompt).
    said = sim.channel.last_message
    assert said.content.startswith(f"{alice.mention} job {job.id} could not be finished.")
    assert "refunded" in said.content
    assert "stopped twice" not in said.content


async def test_fifty_members_three_commands_each_at_once(sim):
    """150 /dream at once: each answered in time, queued and charged or refused with a
    reason, served round-robin, and the books balance afterwards."""
    members = [sim.member(f"member{i:02d}") for i in range(50)]
    # SimCord runs one actor operation at a time; each returns once the bot is idle or
    # parked, so the 150 arrive within the same virtual instant while the engine works.
    started = sim.env.now()
    results = []
    for round_ in range(3):
        for member in members:
            results.append(
                await member.slash(sim.channel, "dream", prompt=f"{round_} {member.name}", steps=1)
            )
    assert sim.env.now() == started
    assert all(result.acknowledged for result in results)
    callbacks = [r.json for r in sim.env.http_requests if r.path.endswith("/callback")]
    assert callbacks == [{"type": 5}] * 150, "every command deferred first"

    dreams = sim.bot.dreams
    await wait_until(
        sim.env,
        lambda: all(has_result(r) or ephemeral_followups(r) for r in results),
        limit=120,
    )
    await sim.bot.scheduler.drain()
    jobs = await dreams.jobs.with_status(*JobStatus)
    by_interaction = {job.interaction_id: job for job in jobs}
    refused = 0
    for result in results:
        job = by_interaction.get(
            result.response.message.interaction_metadata.id if result.response else None
        )
        if job is None:
            [reason] = ephemeral_followups(result)
            assert reason.startswith("❌ The queue is full") or "You already have" in reason
            refused += 1
        else:
            assert job.status == JobStatus.SUCCEEDED
            assert job.cost == 1
    assert len(jobs) + refused == 150
    assert len(jobs) >= 100  # the global cap bounds what waits at once, not what is served

    # Round-robin: nobody is served two rounds ahead of a member who was already waiting.
    served = sorted(jobs, key=lambda job: job.started_at)
    index_of: dict[int, int] = {}
    rank = {}
    for job in sorted(jobs, key=lambda job: job.id):
        rank[job.id] = index_of.get(job.user_id, 0)
        index_of[job.user_id] = rank[job.id] + 1
    for position, later in enumerate(served):
        for earlier in served[position + 1 :]:
            waiting_first = earlier.created_at < later.started_at
            assert not (waiting_first and rank[earlier.id] + 1 < rank[later.id]), (
                f"job {later.id} (turn {rank[later.id]}) ran before job {earlier.id} "
                f"(turn {rank[earlier.id]})"
            )
    assert await sim.bot.credits.check() == []


async def test_price_is_shown_before_running(sim):
    sim.bot.dreams.settings.price_per_image = 100.0
    alice = sim.member("alice")
    result = await alice.slash(sim.channel, "price", size="128x128", steps=40, count=2)
    assert result.ephemeral
    # 128x128 is 1/16 of a standard image, x2 steps, x2 images: 0.25 units -> 25 credits
    assert result.response.content == "2× 128x128, 40 steps on tiny costs 25 credits; you have 50."
    bad = await alice.slash(sim.channel, "price", size="100x100")
    assert bad.ephemeral
    assert "multiples of 8" in bad.response.content
    sim.expected_errors()
    assert await sim.bot.scheduler.jobs.with_status(*JobStatus) == []

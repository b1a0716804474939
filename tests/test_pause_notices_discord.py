"""Members whose jobs already wait when the queue pauses are told so, and told again when
it goes on (issue 12), through SimCord. The pause is driven through the engine port: the
engine thread with the pace of GPU workers' Redis (bot/fleet/watch.py's FleetWatch), which
the test makes unreachable and reachable; tests/test_fleet_paused.py does it with a real
redis-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from bot.client.runner import build_bot
from bot.fleet.watch import PAUSE_AFTER, FleetWatch
from bot.jobs.contracts import QueueEntry
from bot.jobs.engines import local_engine
from bot.jobs.waits import PAUSED
from bot.settings import Settings
from engine.api.port import Pace
from engine.worker import EngineConfig, EngineWorker
from tests.conftest import DEADLINE, EngineGate, simulated, wait_until
from tests.discord_helpers import has_result, original_edits
from tests.factories import tiny_params
from tests.fleet_helpers import Recorder, until
from tests.test_results_discord import answer, replies_to, reply_result
from tests.test_results_discord import dream as finished_dream
from tests.test_train_discord import bot_messages, photos


class PausableEngine(EngineWorker):
    """The engine thread, paced as GPU workers are: paused while their Redis does not
    answer."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self.watch = FleetWatch()

    def pace(self) -> Pace:
        return self.watch.pace()

    async def pace_changed(self, seen: Pace) -> Pace:
        return await self.watch.pace_changed(seen)

    def redis_stops(self) -> None:
        for _ in range(PAUSE_AFTER):
            self.watch.unreachable(ConnectionError("Connection refused"))
        assert self.watch.paused

    def redis_answers(self) -> None:
        self.watch.answered()


def pausable(settings: Settings) -> PausableEngine:
    return PausableEngine(local_engine(settings).config)


@pytest_asyncio.fixture
async def pausing(settings: Settings) -> AsyncIterator[tuple[Any, PausableEngine]]:
    """A SimCord world whose engine can pause."""
    engine = pausable(settings)
    async with simulated(settings, engine) as world:
        yield world, engine


@pytest_asyncio.fixture
async def held(pausing: Any) -> AsyncIterator[tuple[Any, PausableEngine, EngineGate]]:
    """The same, its engine held on a first piece of work until the test opens it."""
    world, engine = pausing
    gate = EngineGate(engine)
    try:
        yield world, engine, gate
    finally:
        await gate.open()


async def dream(sim: Any, member: Any, prompt: str, seed: int) -> Any:
    return await member.slash(sim.channel, "dream", prompt=prompt, steps=1, seed=seed)


def content(result: Any) -> str:
    return result.response.content or ""


async def test_waiting_jobs_are_told_of_a_pause_and_of_the_end_of_it_and_then_run(held):
    sim, engine, gate = held
    alice, bob = sim.member("alice"), sim.member("bob")
    running = await dream(sim, alice, "a lighthouse", 1)
    assert len(sim.bot.scheduler.queue.running) == 1, "claimed, held on the engine"
    second = await dream(sim, alice, "a harbour", 2)
    third = await dream(sim, bob, "a boat", 3)
    assert content(second).startswith("Queued: position 2.")
    assert content(third).startswith("Queued: position 3.")
    assert PAUSED not in content(second) + content(third)
    running_edits = len(original_edits(sim.env, running))
    edits = [len(original_edits(sim.env, r)) for r in (second, third)]

    engine.redis_stops()
    await wait_until(sim.env, lambda: PAUSED in content(second) and PAUSED in content(third))
    assert content(second).startswith("Queued: position 2. ")
    assert content(second).endswith(f"\n{PAUSED}")
    assert content(third).startswith("Queued: position 3. ")
    assert [len(original_edits(sim.env, r)) for r in (second, third)] == [e + 1 for e in edits]
    assert len(original_edits(sim.env, running)) == running_edits, "a running job is not told"
    assert PAUSED not in content(running)
    paused_edit = original_edits(sim.env, third)[-1]
    assert paused_edit["allowed_mentions"] == {"parse": []}, "nobody is pinged"

    engine.redis_answers()
    await wait_until(sim.env, lambda: PAUSED not in content(second) + content(third))
    assert content(second).startswith("Queued: position 2. ")
    assert content(third).startswith("Queued: position 3. ")
    assert [len(original_edits(sim.env, r)) for r in (second, third)] == [e + 2 for e in edits]
    assert len(original_edits(sim.env, running)) == running_edits

    await gate.open()
    await wait_until(sim.env, lambda: all(has_result(r) for r in (running, second, third)))
    await sim.bot.scheduler.drain()
    for result in (running, second, third):
        assert PAUSED not in repr(result.response.embeds[0].to_dict())


async def test_a_job_queued_while_paused_loses_the_sentence_when_the_queue_goes_on(held):
    sim, engine, gate = held
    alice, bob = sim.member("alice"), sim.member("bob")
    await dream(sim, alice, "a lighthouse", 1)
    engine.redis_stops()
    await sim.env.settle()
    waiting = await dream(sim, bob, "a boat", 3)
    assert content(waiting).startswith("Queued: position 2. ")
    assert content(waiting).endswith(f"\n{PAUSED}"), "told with the position"
    edits = len(original_edits(sim.env, waiting))

    engine.redis_answers()
    await wait_until(sim.env, lambda: PAUSED not in content(waiting))
    assert content(waiting).startswith("Queued: position 2. ")
    assert len(original_edits(sim.env, waiting)) == edits + 1

    await gate.open()
    await wait_until(sim.env, lambda: has_result(waiting))
    embed = waiting.response.embeds[0].to_dict()
    assert PAUSED not in repr(embed), "the result carries the server's notes, not the pause"


async def test_a_pause_over_before_the_bot_looked_edits_nothing(held):
    sim, engine, _ = held
    alice = sim.member("alice")
    await dream(sim, alice, "a lighthouse", 1)
    waiting = await dream(sim, alice, "a harbour", 2)
    edits = len(original_edits(sim.env, waiting))
    engine.redis_stops()
    engine.redis_answers()
    await sim.env.settle()
    assert len(original_edits(sim.env, waiting)) == edits
    assert PAUSED not in content(waiting)


async def test_a_waiting_training_is_told_of_the_pause_in_its_own_message(held):
    sim, engine, gate = held
    alice = sim.member("alice")
    first = await dream(sim, alice, "a lighthouse", 1)
    answer = await alice.slash(
        sim.channel, "train", name="rex", class_word="dog", steps=2, **photos(3)
    )
    assert not answer.ephemeral
    [queued] = bot_messages(sim, "Training **rex** for")
    assert "position 2" in queued.content
    assert PAUSED not in queued.content

    engine.redis_stops()
    await wait_until(sim.env, lambda: bot_messages(sim, PAUSED))
    [queued] = bot_messages(sim, "Training **rex** for")
    assert "queued as job" in queued.content
    assert "position 2 (cost " in queued.content
    assert queued.content.endswith(f"). {PAUSED}")
    patches = [r.json for r in sim.env.http_requests if r.method == "PATCH"]
    [edit] = [json for json in patches if PAUSED in str(json)]
    assert edit["allowed_mentions"] == {"parse": []}, "the member is not pinged again"
    assert PAUSED not in content(first), "the running /dream is not told"

    engine.redis_answers()
    await wait_until(sim.env, lambda: not bot_messages(sim, PAUSED))
    [queued] = bot_messages(sim, "Training **rex** for")
    assert "queued as job" in queued.content
    assert "position 2" in queued.content

    await gate.open()
    await wait_until(sim.env, lambda: bot_messages(sim, "**rex** is ready"))
    await sim.bot.scheduler.drain()


async def test_a_buttons_waiting_job_is_told_in_its_reply_and_its_presser_privately(pausing):
    sim, engine = pausing
    alice = sim.member("alice")
    message = await finished_dream(sim, alice)
    gate = EngineGate(engine)
    try:
        await dream(sim, alice, "a lighthouse", 1)
        await alice.click(message, label="Reroll")
        [reply] = replies_to(sim, message)
        assert reply.content.startswith(f"Reroll for {alice.mention}: Queued: position 2. ")

        engine.redis_stops()
        await wait_until(sim.env, lambda: PAUSED in replies_to(sim, message)[0].content)
        assert replies_to(sim, message)[0].content.endswith(f"\n{PAUSED}")
        pressed = await alice.click(message, label="Vary (subtle)")
        assert answer(pressed).startswith("Queued as job "), answer(pressed)
        assert answer(pressed).endswith(f" {PAUSED}"), "a press while paused is told so"

        engine.redis_answers()
        await wait_until(
            sim.env, lambda: all(PAUSED not in m.content for m in replies_to(sim, message))
        )
        contents = sorted(m.content for m in replies_to(sim, message))
        assert contents[0].startswith(f"Reroll for {alice.mention}: Queued: position 2. ")
        assert contents[1].startswith(
            f"Variation of image 1 for {alice.mention}: Queued: position 3. "
        )
    finally:
        await gate.open()
    await reply_result(sim, message, count=2)


# -- the notices, without Discord -------------------------------------------------------


class SlowToTell(Recorder):
    """A member's message that takes its time to edit: each edit waits for the test."""

    def __init__(self) -> None:
        super().__init__()
        self.editing = asyncio.Event()
        self.may_finish = asyncio.Event()

    async def waiting(self, entry: QueueEntry) -> None:
        self.editing.set()
        await self.may_finish.wait()
        await super().waiting(entry)


@contextlib.asynccontextmanager
async def dispatching(settings: Settings) -> AsyncIterator[tuple[Any, PausableEngine]]:
    engine = pausable(settings)
    bot = build_bot(settings, engine)
    async with bot.store, bot.engine:
        dispatcher = asyncio.create_task(bot.scheduler.run())
        gate = EngineGate(engine)
        try:
            yield bot, engine
        finally:
            await gate.open()
            await bot.scheduler.stop(dispatcher, grace=DEADLINE)
            await bot.scheduler.drain()


async def submit(bot: Any, user_id: int, observer: Any, seed: int) -> Any:
    return await bot.dreams.submit(
        bot.dreams.check(tiny_params(steps=1, seed=seed)),
        user_id=user_id,
        guild_id=None,
        channel_id=None,
        interaction_id=None,
        observer=observer,
    )


async def test_a_resume_while_the_pause_is_still_being_told_leaves_the_last_word(settings):
    async with dispatching(settings) as (bot, engine):
        await submit(bot, 1, Recorder(), 1)
        await until(lambda: bot.scheduler.queue.running)
        slow, other = SlowToTell(), Recorder()
        await submit(bot, 2, slow, 2)
        await submit(bot, 3, other, 3)

        engine.redis_stops()
        await asyncio.wait_for(slow.editing.wait(), DEADLINE)
        engine.redis_answers()  # while the pause's edits are still under way
        await until(lambda: other.waits)
        slow.may_finish.set()
        await until(lambda: len(slow.waits) == 2 and len(other.waits) == 2)
        assert [entry.paused for entry in slow.waits] == [True, False]
        assert [entry.paused for entry in other.waits] == [True, False]
        assert [entry.position for entry in other.waits] == [3, 3]
        await asyncio.sleep(0)
        assert len(slow.waits) == len(other.waits) == 2, "one edit each per flip"

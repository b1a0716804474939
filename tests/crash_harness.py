"""A bot process for the crash tests: `python -m tests.crash_harness PHASE DATA MODEL [ROUND SEED]`.

`first` starts the bot in a SimCord world, has three members ask for images and prints
`RUNNING <job>` once a job is on the engine; the test then kills the process with SIGKILL.
`second` starts a new process on the same data folder, in a world built the same way (so
the channel has the same id), waits until every job has ended and prints a JSON report.

`chaos ROUND SEED` is one life of the bot in the randomized test: it starts (recovering what
the previous life left), members ask for images and cancel some, and it waits to be
killed. Along the way it prints `MARK <point> <id>` lines at the moments of a job's life the
test aims its SIGKILL at (see `instrument`); after `MARK idle` nothing is left to do.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import simcord

import data.credits
from bot.client.runner import build_bot
from bot.jobs import recovery as bot_recovery
from bot.settings import Settings
from data import JobStatus

GUILD = 424242424242424242
MEMBERS = ("alice", "bob", "carol")
# How long the process holds still at a marked point: a kill aimed just after the marker
# then lands inside that moment (mid-transaction, mid-write) rather than always after it.
HOLD = 0.02
_out = threading.Lock()  # markers come from the loop and from image-writing threads


def settings(data: Path, model: Path) -> Settings:
    return Settings(
        _env_file=None,
        discord_token="crash-test",
        dev_guild_id=GUILD,
        data_dir=data,
        models={"tiny": {"source": str(model), "default_size": (64, 64)}},
        default_model="tiny",
    )


async def world(bot):  # the same objects in the same order give the same ids
    env = simcord.Env(bot, settle_timeout=30.0)
    bot.scheduler.idle_wait = env.external_wait
    # The server exists before the bot starts, as it does on Discord: start-up posts what
    # the previous life left unposted, into a channel that must already be there.
    guild = env.create_guild(id=GUILD)
    channel = guild.create_text_channel("art")
    members = [guild.add_member(env.create_user(name)) for name in MEMBERS]
    await env.start()
    return env, channel, members


def mark(point: str, *values: object) -> None:
    line = " ".join(["MARK", point, *(str(v) for v in values if v != "")]) + "\n"
    with _out:  # one write per line: the test reads whole lines
        sys.stdout.write(line)
        sys.stdout.flush()


def announce(
    owner: Any,
    name: str,
    before: str,
    after: str | None = None,
    *,
    key: Callable[..., object] = lambda *args, **kwargs: args[0] if args else "",
    hold: bool = True,
) -> None:
    """Replace `owner.name` with the same function that says when it is entered (`before`,
    then holds still for HOLD seconds) and left (`after`). `key` picks what to print from
    the arguments. Only the timing changes: the real code runs as it is."""
    function = getattr(owner, name)

    def enter(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mark(before, key(*args, **kwargs))
        if hold:
            # time.sleep, not asyncio.sleep: nothing else runs on the loop meanwhile, so
            # the moment (an open transaction, say) stays exactly where it is.
            time.sleep(HOLD)

    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            enter(args, kwargs)
            result = await function(*args, **kwargs)
            if after:
                mark(after, key(*args, **kwargs))
            return result

    else:

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            enter(args, kwargs)
            result = function(*args, **kwargs)
            if after:
                mark(after, key(*args, **kwargs))
            return result

    setattr(owner, name, wrapper)


def instrument(bot: Any) -> None:
    """Markers at the points of a job's life where a crash could hurt the books: start-up
    recovery, the charge's transaction, the claim, the denoising steps, the image files and
    the transaction that records them. The names are those test_crash.py aims at."""
    scheduler, jobs = bot.scheduler, bot.scheduler.jobs
    announce(bot_recovery, "recover", "recover", "recovered", key=lambda scheduler: "")
    announce(jobs, "requeue", "requeue", "requeued")
    announce(jobs, "finish", "finish", "finished")
    announce(jobs, "create", "submit", key=lambda **kw: kw["user_id"])
    # Inside create's transaction, between the job's row and its charge (data/jobs.py
    # calls it through the module, so this is the function it finds).
    announce(data.credits, "charge", "charge", "charged", key=lambda db, user, cost, job: job)
    announce(jobs, "mark_running", "claim", "claimed")
    announce(jobs, "complete", "complete", "completed")
    # Runs on a worker thread (asyncio.to_thread): the hold keeps a file half written.
    announce(bot.dreams.handler, "_write_images", "write", "written")

    report = scheduler.report_progress

    def report_progress(job_id: int, progress: Any) -> None:
        mark("step", job_id, progress.step)
        report(job_id, progress)

    scheduler.report_progress = report_progress


async def first(data: Path, model: Path) -> None:
    bot = build_bot(settings(data, model))
    env, channel, members = await world(bot)
    for member, steps in zip(members, (150, 2, 2), strict=True):
        await member.slash(channel, "dream", prompt=f"for {member.name}", steps=steps, seed=1)
    while True:
        await env.settle()
        running = await bot.scheduler.jobs.with_status(JobStatus.RUNNING)
        if running:
            print(f"RUNNING {running[0].id}", flush=True)
            await asyncio.sleep(3600)  # until SIGKILL
        await asyncio.sleep(0.05)


async def cancel_then_die(data: Path, model: Path) -> None:
    """A member cancels the running job; the process dies the moment they have been told
    it is stopping, before the engine's next step could end it."""
    bot = build_bot(settings(data, model))
    env, channel, members = await world(bot)
    for member, steps in zip(members, (150, 2, 2), strict=True):
        await member.slash(channel, "dream", prompt=f"for {member.name}", steps=steps, seed=1)
    while not (running := await bot.scheduler.jobs.with_status(JobStatus.RUNNING)):
        await env.settle()
        await asyncio.sleep(0.05)
    job = running[0]
    [member] = [m for m in members if m.id == job.user_id]
    answer = await member.slash(channel, "cancel", job=job.id)
    print(f"CANCELLED {job.id} {answer.response.content}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


async def store_then_die(data: Path, model: Path) -> None:
    """The process dies right after a job's result is stored (succeeded, charged), before
    anything is posted: the moment an outbox exists for."""
    bot = build_bot(settings(data, model))
    jobs = bot.scheduler.jobs
    complete = jobs.complete

    async def complete_and_die(job_id: int, images: Any) -> bool:
        stored = await complete(job_id, images)
        print(f"STORED {job_id}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        return stored

    jobs.complete = complete_and_die
    _, channel, members = await world(bot)
    await members[0].slash(channel, "dream", prompt="for alice", steps=2, seed=1)
    await asyncio.sleep(3600)  # until the kill above


async def wait_until_idle(env: Any, bot: Any, limit: float) -> None:
    """Until no job is queued or running (or `limit` seconds, a safety net), settling."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        await env.settle()
        if not await bot.scheduler.jobs.with_status(JobStatus.QUEUED, JobStatus.RUNNING):
            return
        await asyncio.sleep(0.05)


async def chaos(data: Path, model: Path, round_number: int, seed: int) -> None:
    rng = random.Random(f"{seed}:{round_number}")
    bot = build_bot(settings(data, model))
    instrument(bot)
    mark("start", round_number)
    env, channel, members = await world(bot)
    # SimCord's ids come from its virtual clock, which starts at the same instant in every
    # process: without moving it on, this life's first /dream would get the interaction id
    # of an earlier life's, and the bot would rightly take it for a retry of that one.
    await env.advance_time(3600.0 * round_number)
    mark("ready")
    for _ in range(rng.randint(2, 4)):
        member = rng.choice(members)
        if rng.random() < 0.2:
            await member.slash(channel, "cancel")  # their latest job, queued or running
        else:
            await member.slash(
                channel,
                "dream",
                prompt=f"round {round_number} for {member.name}",
                steps=rng.randint(2, 8),
                count=rng.choice((1, 1, 2)),
                seed=rng.randrange(1000),
            )
        await asyncio.sleep(rng.uniform(0.0, 0.3))  # let the engine get going meanwhile
    await wait_until_idle(env, bot, 240)
    mark("idle")
    await asyncio.sleep(3600)  # until SIGKILL


async def second(data: Path, model: Path) -> None:
    bot = build_bot(settings(data, model))
    env, channel, members = await world(bot)
    jobs = bot.scheduler.jobs
    # A 150-step job on a shared 2-core machine can take minutes: wait up to the test's limit.
    await wait_until_idle(env, bot, 240)
    await bot.scheduler.drain()
    await env.settle()
    report = {
        "jobs": [
            {
                "id": j.id,
                "status": j.status.value,
                "attempts": j.attempts,
                "cost": j.cost,
                "message_id": j.message_id,
            }
            for j in await jobs.with_status(*JobStatus)
        ],
        "posted": [m.content for m in channel.history() if "finished after a restart" in m.content],
        "problems": await bot.credits.check(),
        "balances": {
            name: (await bot.credits.balance(member.id)).account.balance
            for name, member in zip(MEMBERS, members, strict=True)
        },
        "members": {name: member.id for name, member in zip(MEMBERS, members, strict=True)},
        "owners": {str(j.id): j.user_id for j in await jobs.with_status(*JobStatus)},
    }
    print(json.dumps(report), flush=True)
    await env.shutdown()
    await bot.close()


if __name__ == "__main__":
    phase, data_dir, model_dir = sys.argv[1:4]
    paths = (Path(data_dir), Path(model_dir))
    if phase == "chaos":
        run = chaos(*paths, int(sys.argv[4]), int(sys.argv[5]))
    else:
        phases = {
            "first": first,
            "second": second,
            "cancel": cancel_then_die,
            "store": store_then_die,
        }
        run = phases[phase](*paths)
    # aiosqlite's thread is not a daemon: never let a failure leave the process hanging.
    try:
        asyncio.run(run)
    except BaseException:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)

"""A bot process for the crash test: `python -m tests.crash_harness first|second DATA MODEL`.

`first` starts the bot in a SimCord world, has three members ask for images and prints
`RUNNING <job>` once a job is on the engine; the test then kills the process with SIGKILL.
`second` starts a new process on the same data folder, in a world built the same way (so
the channel has the same id), waits until every job has ended and prints a JSON report.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import simcord

from bot.runner import build_bot
from bot.settings import Settings
from data import JobStatus

GUILD = 424242424242424242
MEMBERS = ("alice", "bob", "carol")


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
    bot.dreams.idle_wait = env.external_wait
    await env.start()
    guild = env.create_guild(id=GUILD)
    channel = guild.create_text_channel("art")
    members = [guild.add_member(env.create_user(name)) for name in MEMBERS]
    return env, channel, members


async def first(data: Path, model: Path) -> None:
    bot = build_bot(settings(data, model))
    env, channel, members = await world(bot)
    for member, steps in zip(members, (150, 2, 2), strict=True):
        await member.slash(channel, "dream", prompt=f"for {member.name}", steps=steps, seed=1)
    while True:
        await env.settle()
        running = await bot.dreams.jobs.with_status(JobStatus.RUNNING)
        if running:
            print(f"RUNNING {running[0].id}", flush=True)
            await asyncio.sleep(3600)  # until SIGKILL
        await asyncio.sleep(0.05)


async def second(data: Path, model: Path) -> None:
    bot = build_bot(settings(data, model))
    env, channel, members = await world(bot)
    jobs = bot.dreams.jobs
    # A 150-step job on a shared 2-core machine can take minutes: wait up to the test's limit.
    deadline = asyncio.get_running_loop().time() + 240
    while asyncio.get_running_loop().time() < deadline:
        await env.settle()
        pending = await jobs.with_status(JobStatus.QUEUED, JobStatus.RUNNING)
        if not pending:
            break
        await asyncio.sleep(0.05)
    await bot.dreams.drain()
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
    }
    print(json.dumps(report), flush=True)
    await env.shutdown()
    await bot.close()


if __name__ == "__main__":
    phase, data_dir, model_dir = sys.argv[1:4]
    run = first if phase == "first" else second
    # aiosqlite's thread is not a daemon: never let a failure leave the process hanging.
    try:
        asyncio.run(run(Path(data_dir), Path(model_dir)))
    except BaseException:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)

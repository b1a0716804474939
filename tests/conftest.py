"""Shared fixtures: tiny real models saved to disk, settings that point at them, SimCord."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

# No test may reach the Hugging Face Hub: everything loads from folders the tests build.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from bot.settings import Settings
from engine.pipelines.tiny import save_tiny_instruct_pix2pix, save_tiny_model
from tests.redis_server import RedisServer, require_redis_server

DEV_GUILD = 424242424242424242
# How long a test waits for work it cannot see finish (the engine thread, a subprocess)
# before calling it stuck. Only a hang should ever reach it: tests wait on events, and a
# machine whose cores are busy with other work must still pass. SDBOT_TEST_DEADLINE raises
# it for a very slow machine.
DEADLINE = float(os.environ.get("SDBOT_TEST_DEADLINE", "600"))


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd1", "sd1")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl", "sdxl")


@pytest.fixture(scope="session")
def tiny_pix2pix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny InstructPix2Pix model (/edit): an SD1 folder whose UNet takes 8 channels."""
    return save_tiny_instruct_pix2pix(tmp_path_factory.mktemp("models") / "tiny-ip2p")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own on a free loopback port, with a password and
    no persistence; fresh for each test and stopped after it. Skips where redis-server is
    missing, fails under CI=true (see tests/redis_server.py)."""
    executable = require_redis_server(DEADLINE)
    server = RedisServer(tmp_path / "redis", executable=executable, deadline=DEADLINE)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_settings(tmp_path: Path, tiny_sd1: Path) -> Callable[..., Settings]:
    """Settings as an owner would write them, pointing at the tiny model; no `.env` read."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "discord_token": "test-token",
            "dev_guild_id": DEV_GUILD,
            "data_dir": tmp_path / "var",
            "models": {
                "tiny": {
                    "source": str(tiny_sd1),
                    "default_size": (64, 64),
                    "max_pixels": 128 * 128,
                    "note": "tiny random SD1",
                },
            },
            "default_model": "tiny",
            "progress_interval": 0.0,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


async def wait_until(env: Any, predicate: Callable[[], bool], limit: float = DEADLINE) -> None:
    """Wait for work SimCord cannot see (the engine thread) until `predicate` holds, settling
    each round; `limit` only tells a hang from slowness."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        await env.settle()
        if predicate():
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {limit}s\n{env.transcript()}")
        await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def sim(settings: Settings) -> AsyncIterator[Any]:
    """A SimCord world with our bot logged in, a guild, a channel and two members."""
    async with simulated(settings) as world:
        yield world


@contextlib.asynccontextmanager
async def simulated(settings: Settings, engine: Any = None) -> AsyncIterator[SimWorld]:
    """The `sim` fixture's world, with the bot built on `engine` when one is given."""
    import simcord

    from bot.client.runner import build_bot

    bot = build_bot(settings, engine)
    env = simcord.Env(bot, settle_timeout=DEADLINE)
    bot.scheduler.idle_wait = env.external_wait
    await env.start()
    guild = env.create_guild(id=DEV_GUILD)
    world = SimWorld(env, bot, guild, guild.create_text_channel("art"), settings)
    try:
        yield world
    finally:
        await env.shutdown()
        await world.bot.close()
    unexpected = env.errors_since(world.errors_seen)
    if unexpected:
        raise ExceptionGroup("the bot raised errors the test did not expect", list(unexpected))


class SimWorld:
    def __init__(self, env: Any, bot: Any, guild: Any, channel: Any, settings: Settings) -> None:
        self.env = env
        self.bot = bot
        self.settings = settings
        self.guild = guild
        self.channel = channel
        self._members: dict[str, Any] = {}
        self.errors_seen = 0

    def expected_errors(self) -> list[BaseException]:
        """Errors the bot handled (SimCord records them too); unread ones fail the test."""
        errors = list(self.env.errors_since(self.errors_seen))
        self.errors_seen += len(errors)
        return errors

    async def restart(self) -> None:
        """A new bot process on the same data folder, as after a crash or an update."""
        from bot.client.runner import build_bot

        old = self.bot
        await old.close()  # stops the engine thread and closes the database
        self.bot = build_bot(self.settings)
        self.bot.scheduler.idle_wait = self.env.external_wait
        await self.env.restart_bot(self.bot)

    def member(self, name: str) -> Any:
        if name not in self._members:
            self._members[name] = self.guild.add_member(self.env.create_user(name))
        return self._members[name]


class EngineGate:
    """Holds the engine thread on a first piece of work, so that a job queued behind it is
    mid-run (accepted, charged, claimed, waiting on the GPU) for as long as a test needs."""

    def __init__(self, engine: Any) -> None:
        self._opened = threading.Event()
        self._held = asyncio.ensure_future(engine.call(self._opened.wait))

    async def open(self) -> None:
        self._opened.set()
        await self._held


@pytest_asyncio.fixture
async def gate(sim: Any) -> AsyncIterator[EngineGate]:
    """The engine thread held on a first piece of work until the test opens it."""
    held = EngineGate(sim.bot.engine)
    yield held
    await held.open()  # never leave the engine thread blocked for the bot's shutdown

"""GPU workers on Redis Streams (bot/fleet), against a real redis-server: the bot as
`python -m bot` builds it with SDBOT_QUEUE_URL set, and workers running the real worker code
with the tiny model's engine thread, in this process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
import torch
from PIL import Image
from pydantic import ValidationError

from bot.__main__ import main
from bot.cli.doctor import doctor_findings, startup_problems
from bot.client.runner import build_bot
from bot.fleet import files, protocol
from bot.fleet.adapter import RedisEngine
from bot.fleet.worker import FleetWorker
from bot.jobs.engines import local_engine
from bot.jobs.waits import Waits
from bot.settings import Settings
from data.jobs import JobStatus
from engine.api.errors import EngineError
from engine.api.specs import ModelSpec
from engine.imaging.images import read_png_infotext
from engine.pipelines.loading import load_model
from tests.conftest import DEADLINE
from tests.factories import tiny_params
from tests.fleet_helpers import Recorder, TrainingRecorder, bot_environment, submit_training, until
from tests.kohya_files import addnet_hash, kohya_state, write_kohya


class Fleet:
    """Workers in this process, each with its own engine thread, started and stopped."""

    def __init__(self, settings: Settings, url: str, lease: float) -> None:
        self.settings = settings
        self.url = url
        self.lease = lease
        self.workers: dict[str, FleetWorker] = {}
        self._tasks: dict[str, tuple[asyncio.Task[None], asyncio.Event, Any]] = {}
        self._held: Any = None  # an engine the test holds on other work (not preloaded)

    async def start(
        self, name: str, engine: Any = None, loaded: Sequence[str] | None = None
    ) -> FleetWorker:
        """A worker serving `engine`'s models, with `loaded` loaded in turn first (all of
        them unless said: the last one stays on its card)."""
        db: Any = redis.Redis.from_url(self.url)
        engine = engine or local_engine(self.settings)
        if not engine.running:
            engine.start()
        # One at a time: diffusers' loading is not thread-safe within one process, and
        # real workers are processes of their own.
        if engine is not self._held:
            for model in engine.config.models if loaded is None else loaded:
                await engine.preload(model)
        worker = FleetWorker(db, engine, name, self.settings.data_dir / name, self.lease)
        stop = asyncio.Event()
        self.workers[name] = worker
        self._tasks[name] = (asyncio.create_task(worker.serve(stop)), stop, db)
        await until(lambda: bool(worker.heartbeats))
        return worker

    async def kill(self, name: str) -> None:
        """As SIGKILL leaves it: no outcome, no acknowledgement, no goodbye; its heartbeat
        expires on its own."""
        task, _, db = self._tasks.pop(name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await db.aclose()

    async def stop_all(self) -> None:
        for name in list(self._tasks):
            task, stop, db = self._tasks.pop(name)
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await db.aclose()
        for worker in self.workers.values():
            await worker.engine.stop()


@pytest.fixture
def fleet_settings(make_settings: Callable[..., Settings], redis_server: Any) -> Settings:
    return make_settings(queue_url=redis_server.url)


@pytest.fixture
async def fleet_bot(
    fleet_settings: Settings, redis_server: Any
) -> AsyncIterator[tuple[Any, Fleet]]:
    """The bot's objects, as `python -m bot` builds them with SDBOT_QUEUE_URL, without
    Discord; its dispatcher running, and a fleet to start workers in."""
    async with running_fleet(fleet_settings, redis_server.url) as (bot, fleet):
        assert isinstance(bot.engine, RedisEngine)
        yield bot, fleet


@contextlib.asynccontextmanager
async def running_fleet(settings: Settings, url: str) -> AsyncIterator[tuple[Any, Fleet]]:
    """The bot built from `settings` with its dispatcher running, and a fleet at `url` to
    start workers in; all stopped on the way out."""
    bot = build_bot(settings)
    fleet = Fleet(settings, url, lease=1.0)
    async with bot.store, bot.engine:
        dispatcher = asyncio.create_task(bot.scheduler.run())
        try:
            yield bot, fleet
        finally:
            await bot.scheduler.stop(dispatcher, grace=5.0)
            await bot.scheduler.drain()
            await fleet.stop_all()


async def submit(bot: Any, user_id: int, observer: Recorder, **params: Any) -> Any:
    return await bot.dreams.submit(
        bot.dreams.check(tiny_params(**params)),
        user_id=user_id,
        guild_id=None,
        channel_id=None,
        interaction_id=None,
        observer=observer,
    )


async def test_jobs_of_several_members_are_spread_over_two_workers(fleet_bot):
    bot, fleet = fleet_bot
    one, two = await fleet.start("one"), await fleet.start("two")
    observers = [Recorder() for _ in range(6)]
    tickets = [
        await submit(bot, 10 + index % 3, observer, seed=index, steps=2)
        for index, observer in enumerate(observers)
    ]
    for observer in observers:
        await asyncio.wait_for(observer.ended.wait(), DEADLINE)
    assert all(observer.outcomes and not observer.failures for observer in observers)
    assert all(observer.outcomes[0].images[0].png.startswith(b"\x89PNG") for observer in observers)
    assert one.served, "both workers took batches"
    assert two.served, "both workers took batches"
    assert one.served + two.served == 6
    for ticket in tickets:
        job = await bot.scheduler.jobs.get(ticket.job.id)
        assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1)
    assert await bot.dreams.credits.check() == []


async def test_nothing_is_released_until_a_worker_is_there_and_a_late_one_serves_it(fleet_bot):
    bot, fleet = fleet_bot
    observer = Recorder()
    ticket = await submit(bot, 10, observer, steps=2)
    await asyncio.sleep(0.5)  # the dispatcher is waiting for a worker, not sending
    assert (await bot.scheduler.jobs.get(ticket.job.id)).status is JobStatus.QUEUED
    await fleet.start("late")
    await asyncio.wait_for(observer.ended.wait(), DEADLINE)
    assert observer.outcomes
    assert observer.steps, "its progress came back too"


async def test_a_worker_that_dies_mid_batch_loses_nothing(fleet_bot):
    bot, fleet = fleet_bot
    held = threading.Event()
    doomed_engine = local_engine(fleet.settings)
    doomed_engine.start()
    await doomed_engine.preload("tiny")
    fleet._held = doomed_engine
    hold = asyncio.ensure_future(doomed_engine.call(held.wait))  # its GPU never comes back
    await fleet.start("doomed", doomed_engine)
    observer = Recorder()
    ticket = await submit(bot, 10, observer, steps=2)
    await until(lambda: fleet.workers["doomed"].busy != "")
    await fleet.kill("doomed")
    survivor = await fleet.start("survivor")
    await asyncio.wait_for(observer.ended.wait(), DEADLINE)
    assert observer.outcomes
    assert not observer.failures
    assert survivor.served == 1
    job = await bot.scheduler.jobs.get(ticket.job.id)
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1), "ended once, claimed once"
    assert await bot.dreams.credits.check() == []
    assert await bot.dreams.credits.balance(10) == 50 - ticket.job.cost, "charged once"
    held.set()
    await hold


async def test_a_cancel_reaches_the_worker_within_a_step(fleet_bot):
    bot, fleet = fleet_bot
    await fleet.start("one")
    observer = Recorder()
    ticket = await submit(bot, 10, observer, steps=150)
    await until(lambda: bool(observer.steps))
    await bot.scheduler.cancel(ticket.job.id, by_user=10, is_admin=False)
    await asyncio.wait_for(observer.ended.wait(), DEADLINE)
    assert observer.failures == [(ticket.job.id, "Cancelled.")]
    assert (await bot.scheduler.jobs.get(ticket.job.id)).status is JobStatus.CANCELLED
    assert await bot.dreams.credits.balance(10) == 50, "refunded"


async def test_what_no_one_asked_for_changes_nothing(fleet_bot, redis_server, caplog):
    bot, fleet = fleet_bot
    caplog.set_level(logging.INFO, logger="bot.fleet")
    db: Any = redis.Redis.from_url(redis_server.url)
    # An outcome for a batch the bot never sent, and entries that are not messages at all.
    forged = {"kind": "done", "batch": "not-one-of-ours", "outcome": []}
    await db.xadd(protocol.EVENTS, {"event": protocol.dumps(forged)})
    await db.xadd(protocol.EVENTS, {"event": "{not json"})
    await db.xadd(protocol.model_stream("tiny"), {"request": "[]"})
    worker = await fleet.start("one")
    observer = Recorder()
    await submit(bot, 10, observer, steps=2)
    await asyncio.wait_for(observer.ended.wait(), DEADLINE)
    assert observer.outcomes
    assert worker.served == 1, "the junk entry was dropped, not run"
    said = " ".join(record.getMessage() for record in caplog.records)
    assert "nobody waits for" in said
    assert "not a message of ours" in said
    pending = await db.xpending(protocol.model_stream("tiny"), protocol.GROUP)
    assert pending["pending"] == 0, "every entry acknowledged"
    await db.aclose()


async def test_a_wrong_password_is_one_clear_error_without_the_password(redis_server):
    engine = RedisEngine(f"redis://:wrong-secret@127.0.0.1:{redis_server.port}/0", ["tiny"])
    with pytest.raises(EngineError) as refused:
        await engine.__aenter__()
    assert "wrong-secret" not in str(refused.value)
    assert "did not answer" in str(refused.value)
    await engine.stop()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://gpu-box:6379", "must start with redis://"),
        ("redis://gpu-box:6379/0", "without a password"),
        ("redis://", "names no host"),
    ],
)
def test_a_queue_url_the_bot_cannot_use_is_refused_naming_the_setting(make_settings, url, problem):
    with pytest.raises(ValidationError) as refused:
        make_settings(queue_url=url)
    assert problem in str(refused.value)
    assert "queue_url" in str(refused.value)


def test_loopback_without_a_password_and_tls_with_one_are_accepted(make_settings):
    assert make_settings(queue_url="redis://127.0.0.1:6379/0").queue_url is not None
    assert make_settings(queue_url="rediss://:pw@gpu-box:6380/0").queue_url is not None
    assert protocol.shown_url("redis://:hunter2@gpu-box:6379/0") == "redis://:***@gpu-box:6379/0"


def test_a_worker_without_a_queue_url_says_so_in_one_line(monkeypatch, capsys, make_settings):
    monkeypatch.setattr("bot.__main__.load_settings", lambda: make_settings())
    assert main(["worker"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "SDBOT_QUEUE_URL is not set: give the worker the same Redis URL as the bot (README,"
        " Adding a GPU machine)"
    ]


def test_messages_carry_bytes_and_refuse_what_is_not_theirs():
    message = {"batch": "b", "png": b"\x89PNG\x00\xff"}
    assert protocol.loads(protocol.dumps(message)) == message
    with pytest.raises(protocol.BadMessage):
        protocol.field({"event": "[1, 2]"}, "event")
    with pytest.raises(protocol.BadMessage):
        protocol.field({}, "event")
    with pytest.raises(TypeError):
        protocol.dumps({"batch": "b", "value": object()})


async def test_train_runs_on_a_worker_and_the_file_comes_back(fleet_bot, caplog):
    bot, fleet = fleet_bot
    await fleet.start("one")
    observer = TrainingRecorder()
    ticket = await submit_training(bot, observer, steps=2)
    await asyncio.wait_for(observer.ended.wait(), DEADLINE)
    assert observer.failures == []
    [outcome] = observer.outcomes
    assert outcome.lora.name == "rex"
    size = await asyncio.to_thread(lambda: Path(outcome.lora.path).stat().st_size)
    assert size > 0, "the trained file is on the bot's disk"
    assert outcome.a1111_file is not None, "and its copy for A1111"
    assert outcome.samples, "its sample images came back too"
    assert "malformed" not in caplog.text, "the samples' progress lines are read as such"
    assert (await bot.scheduler.jobs.get(ticket.job.id)).status is JobStatus.SUCCEEDED


async def test_the_fleet_lists_its_live_workers_and_forgets_a_stopped_one(fleet_bot):
    bot, fleet = fleet_bot
    await fleet.start("one")
    await fleet.start("two")
    observer = Recorder()
    await submit(bot, 10, observer, steps=2)
    await asyncio.wait_for(observer.ended.wait(), DEADLINE)
    listed = await bot.engine.workers()
    assert [worker.name for worker in listed] == ["one", "two"]
    assert all(worker.models == ("tiny",) for worker in listed)
    task, stop, db = fleet._tasks.pop("two")
    stop.set()
    await task  # a worker that stops cleanly removes its heartbeat at once
    await db.aclose()
    assert [worker.name for worker in await bot.engine.workers()] == ["one"]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_redis_that_does_not_answer_stops_the_start_in_one_line(make_settings, capsys):
    port = closed_port()
    settings = make_settings(queue_url=f"redis://:secret-pw@127.0.0.1:{port}/0")
    [problem] = startup_problems(settings)
    line = problem.problem()
    assert line.startswith(f"SDBOT_QUEUE_URL: redis://:***@127.0.0.1:{port}/0 did not answer (")
    assert line.endswith("): start Redis, or fix the URL")
    assert "secret-pw" not in line


def test_a_wrong_redis_password_is_said_at_start(make_settings, redis_server):
    settings = make_settings(queue_url=f"redis://:not-it@127.0.0.1:{redis_server.port}/0")
    [problem] = startup_problems(settings)
    assert problem.problem() == (
        f"SDBOT_QUEUE_URL: redis://:***@127.0.0.1:{redis_server.port}/0 refused the password:"
        " copy Redis's requirepass"
    )


async def test_doctor_shows_redis_and_the_workers_there(fleet_bot, redis_server):
    _, fleet = fleet_bot
    lines = [f.line() for f in await asyncio.to_thread(doctor_findings, fleet.settings)]
    assert "✓ SDBOT_QUEUE_URL: Redis at redis://:***@127.0.0.1" in " ".join(lines)
    assert "✗ GPU workers: none running: start one: python -m bot worker (README)" in lines
    await fleet.start("gpu-1")
    lines = [f.line() for f in await asyncio.to_thread(doctor_findings, fleet.settings)]
    assert "✓ GPU workers: gpu-1" in lines


async def test_a_model_only_one_worker_can_load_goes_only_to_that_worker(two_models_bot):
    bot, fleet = two_models_bot
    settings = fleet.settings
    specs = settings.model_specs()
    common = await fleet.start("common", local_engine(settings, {"tiny": specs["tiny"]}))
    both = await fleet.start("both", local_engine(settings, specs))
    observers = [Recorder() for _ in range(4)]
    for index, observer in enumerate(observers):
        await submit(bot, 10 + index, observer, model="rare", seed=index, steps=2)
    for observer in observers:
        await asyncio.wait_for(observer.ended.wait(), DEADLINE)
    assert all(observer.outcomes for observer in observers)
    assert both.served == 4
    assert common.served == 0, "it cannot load rare, so it never got one"


async def test_redis_restarted_without_its_data_the_fleet_serves_again(fleet_bot, redis_server):
    bot, fleet = fleet_bot
    worker = await fleet.start("one")
    first = Recorder()
    await submit(bot, 10, first, steps=2)
    await asyncio.wait_for(first.ended.wait(), DEADLINE)
    redis_server.kill()  # streams, groups and heartbeats gone with it
    redis_server.start()
    again = Recorder()
    ticket = await submit(bot, 11, again, steps=2)
    await asyncio.wait_for(again.ended.wait(), DEADLINE)
    assert again.outcomes
    assert worker.served == 2
    assert (await bot.scheduler.jobs.get(ticket.job.id)).status is JobStatus.SUCCEEDED


async def console(settings: Settings, *argv: str) -> tuple[int, str, str]:
    """`python -m bot ARGV` as an owner runs it, with these settings in its environment."""
    assert settings.queue_url is not None
    models = {name: spec.source for name, spec in settings.model_specs().items()}
    environment = bot_environment(settings.queue_url.get_secret_value(), models, settings.data_dir)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *argv,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), DEADLINE)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_console_is_served_by_the_fleet(fleet_bot, tmp_path):
    _, fleet = fleet_bot
    argv = ("dream", "a lighthouse", "--steps", "2", "--size", "64x64", "--out", str(tmp_path))
    code, _, err = await console(fleet.settings, *argv)
    assert code == 2, "no worker yet: one line, nothing made"
    assert err.strip().splitlines()[-1] == (
        "error: no GPU worker is running for SDBOT_QUEUE_URL: start one with python -m bot "
        "worker, or give --model a path to run here"
    )
    worker = await fleet.start("one")
    code, out, err = await console(fleet.settings, *argv)
    assert code == 0, err
    [line] = out.splitlines()
    assert worker.served == 1, "made by the worker, not by a local engine thread"
    [picture] = await asyncio.to_thread(lambda: list(tmp_path.glob("*.png")))
    assert line.startswith(str(picture))


class TestLoraFilesTravelWithTheirJobs:
    @pytest.fixture
    def fleet_settings(self, make_settings, redis_server, tmp_path, tiny_sd1) -> Settings:
        folder = tmp_path / "lora-folder"
        folder.mkdir()
        loaded = load_model(ModelSpec("tiny", str(tiny_sd1)), torch.device("cpu"), torch.float32)
        write_kohya(folder / "detail.safetensors", kohya_state(loaded.pipe))
        return make_settings(queue_url=redis_server.url, lora_dir=folder)

    async def test_sent_once_by_content_and_kept_by_the_worker(self, fleet_bot, redis_server):
        bot, fleet = fleet_bot
        worker = await fleet.start("one")
        path = bot.settings.lora_dir / "detail.safetensors"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        plain, tagged, again = Recorder(), Recorder(), Recorder()
        for user, observer, prompt in [
            (10, plain, "a cat"),
            (10, tagged, "a cat <lora:detail:0.8>"),
            (11, again, "a cat <lora:detail:0.8>"),
        ]:
            await submit(bot, user, observer, prompt=prompt, seed=3, steps=2)
            await asyncio.wait_for(observer.ended.wait(), DEADLINE)
        assert not plain.failures + tagged.failures + again.failures
        [base, used, reused] = [r.outcomes[0].images[0].png for r in (plain, tagged, again)]
        assert pixels(base) != pixels(used)
        assert pixels(used) == pixels(reused)
        assert f'Lora hashes: "detail: {addnet_hash(path)}"' in read_png_infotext(used)

        assert bot.engine.files.uploads == 1, "the bot sent the file once"
        assert worker.files.fetches == 1, "the worker fetched it once and kept it"
        kept = worker.files.folder / f"{digest}.safetensors"
        assert kept.read_bytes() == path.read_bytes()
        db: Any = redis.Redis.from_url(redis_server.url)
        entries = await db.xrange(protocol.model_stream("tiny"))
        requests = [protocol.loads(fields[b"request"]) for _, fields in entries]
        named = [job["params"]["loras"] for request in requests for job in request["jobs"]]
        by_content = [["detail", f"sha256:{digest}.safetensors", 0.8]]
        assert named == [[], by_content, by_content]
        assert str(bot.settings.lora_dir) not in str(requests), "no path of the bot's disk"
        assert await db.ttl(files.FILES + digest) > 0, "kept in Redis for a while, not forever"
        await db.aclose()


async def test_a_worker_uses_no_path_and_checks_what_it_fetches(
    redis_server, tmp_path, monkeypatch
):
    db: Any = redis.Redis.from_url(redis_server.url)
    cache = files.FileCache(tmp_path / "worker")
    with pytest.raises(protocol.BadMessage, match="named by a path"):
        await cache.local(db, tiny_params(loras=(("x", "/etc/passwd", 1.0),)))
    missing = f"sha256:{'0' * 64}.safetensors"
    with pytest.raises(EngineError, match="could not get the file of LoRA or embedding x"):
        await cache.local(db, tiny_params(loras=(("x", missing, 1.0),)))
    forged = hashlib.sha256(b"the real one").hexdigest()
    await db.rpush(files.FILES + forged, b"something else")
    with pytest.raises(EngineError, match="could not get the file"):
        await cache.local(db, tiny_params(embeddings=(("zwx", f"sha256:{forged}"),)))
    assert not any((tmp_path / "worker").iterdir()), "nothing unchecked is kept"

    monkeypatch.setattr(files, "CHUNK_BYTES", 1000)  # a file in many chunks
    original = tmp_path / "big.safetensors"
    original.write_bytes(os.urandom(4500))
    sender = files.FileSender()
    shared = await sender.shared(db, tiny_params(loras=(("big", str(original), 1.0),)))
    local = await cache.local(db, shared)
    [(_, kept, _)] = local.loras
    assert await asyncio.to_thread(Path(kept).read_bytes) == original.read_bytes()
    assert await db.llen(files.FILES + hashlib.sha256(original.read_bytes()).hexdigest()) == 5
    await db.aclose()


def pixels(png: bytes) -> bytes:
    return Image.open(io.BytesIO(png)).tobytes()


@pytest.fixture
async def two_models_bot(
    make_settings: Callable[..., Settings], redis_server: Any, tiny_sd1: Path
) -> AsyncIterator[tuple[Any, Fleet]]:
    """The bot and a fleet with two models of the tiny one's files, "tiny" and "rare"."""
    tiny = {"source": str(tiny_sd1), "default_size": (64, 64)}
    settings = make_settings(queue_url=redis_server.url, models={"tiny": tiny, "rare": tiny})
    async with running_fleet(settings, redis_server.url) as (bot, fleet):
        yield bot, fleet


class HeldEngine:
    """A worker's engine thread held on other work, so its next batch waits: busy."""

    def __init__(self, worker: FleetWorker) -> None:
        self._opened = threading.Event()
        self._held = asyncio.ensure_future(worker.engine.call(self._opened.wait))

    async def open(self) -> None:
        self._opened.set()
        await self._held


async def run_one(bot: Any, user_id: int, **params: Any) -> Recorder:
    observer = Recorder()
    await submit(bot, user_id, observer, steps=2, **params)
    await asyncio.wait_for(observer.ended.wait(), DEADLINE)
    assert observer.outcomes, observer.failures
    return observer


async def test_a_batch_goes_to_the_worker_with_its_model_loaded_or_to_another_if_it_is_busy(
    two_models_bot,
):
    bot, fleet = two_models_bot
    ready = await fleet.start("ready", loaded=["rare", "tiny"])  # tiny stays on its card
    other = await fleet.start("other", loaded=["tiny", "rare"])  # rare stays on its card
    assert (ready.engine.loaded_model, other.engine.loaded_model) == ("tiny", "rare")
    for seed in range(4):
        await run_one(bot, 10, seed=seed)
    assert (ready.served, other.served) == (4, 0), "each went where tiny was loaded"

    held = HeldEngine(ready)
    first, second = Recorder(), Recorder()
    await submit(bot, 10, first, seed=10, steps=2)
    await until(lambda: ready.busy != "")
    await submit(bot, 11, second, seed=11, steps=2)
    await asyncio.wait_for(second.ended.wait(), DEADLINE)
    assert second.outcomes
    assert not first.ended.is_set(), "the first still waits on its busy worker"
    assert other.served == 1, "the other worker loaded tiny rather than wait"
    assert other.engine.loaded_model == "tiny"
    await held.open()
    await asyncio.wait_for(first.ended.wait(), DEADLINE)
    assert first.outcomes
    assert ready.served == 5


async def test_of_two_workers_with_the_model_loaded_the_faster_gets_the_batch(fleet_bot):
    bot, fleet = fleet_bot
    slow, fast = await fleet.start("slow"), await fleet.start("fast")
    # What each measured on ten earlier batches: a minute a batch, and a second.
    slow.served, slow.seconds = 10, 600.0
    fast.served, fast.seconds = 10, 10.0
    await slow.publish()
    await fast.publish()
    seen = slow.rounds
    await until(lambda: slow.rounds > seen + 1)  # a round that read them has begun
    for seed in range(4):
        await run_one(bot, 10, seed=seed)
    assert (fast.served, slow.served) == (14, 10), "all four went to the faster"
    held = HeldEngine(fast)
    busy = Recorder()
    await submit(bot, 10, busy, seed=10, steps=2)
    await until(lambda: fast.busy != "")
    await run_one(bot, 11, seed=11)
    assert slow.served == 11, "with the faster busy, the slower took it"
    await held.open()
    await asyncio.wait_for(busy.ended.wait(), DEADLINE)
    assert busy.outcomes


async def test_a_batch_for_a_busy_workers_model_leaves_an_idle_worker_to_other_jobs(
    two_models_bot,
):
    bot, fleet = two_models_bot
    specs = fleet.settings.model_specs()
    both = await fleet.start("both", local_engine(fleet.settings, specs), loaded=["rare"])
    common = await fleet.start("common", local_engine(fleet.settings, {"tiny": specs["tiny"]}))
    held = HeldEngine(both)
    running, waiting, tiny = Recorder(), Recorder(), Recorder()
    await submit(bot, 10, running, model="rare", seed=1, steps=2)
    await until(lambda: both.busy != "")
    # Only the busy worker can load rare: this one waits in Redis for it...
    await submit(bot, 11, waiting, model="rare", seed=2, steps=2)
    # ...and the idle worker is not held back for it: a tiny job behind it runs now.
    await submit(bot, 12, tiny, model="tiny", seed=3, steps=2)
    await asyncio.wait_for(tiny.ended.wait(), DEADLINE)
    assert tiny.outcomes
    assert common.served == 1
    assert not running.ended.is_set()
    assert not waiting.ended.is_set()
    await held.open()
    for observer in (running, waiting):
        await asyncio.wait_for(observer.ended.wait(), DEADLINE)
        assert observer.outcomes
    assert (both.served, common.served) == (2, 1)


async def test_waits_in_the_queue_come_from_the_live_workers_speeds(fleet_bot):
    bot, fleet = fleet_bot
    quick, slow = await fleet.start("quick"), await fleet.start("slow")
    # Measured on earlier batches: 1 s a batch and 3 s, so 2 s over all four; the quick
    # one counts as two GPUs of the typical speed, the slow one as two thirds of one.
    quick.served, quick.seconds = 2, 2.0
    slow.served, slow.seconds = 2, 6.0
    await quick.publish()
    await slow.publish()
    await until(lambda: bot.engine.pace().lanes == pytest.approx(8 / 3))
    held = [HeldEngine(quick), HeldEngine(slow)]
    bot.scheduler.learned(1.0, 12.0)  # a standard image takes 12 s on a typical GPU
    observers = [Recorder() for _ in range(4)]
    try:
        for index, observer in enumerate(observers):
            await submit(bot, 10 + index, observer, seed=index, steps=2)
        await until(lambda: quick.busy and slow.busy)
        entries = bot.scheduler.queue_entries()
        assert [entry.position for entry in entries] == [0, 0, 2, 3]
        one_gpu = Waits(bot.scheduler.handlers)
        one_gpu.seconds_per_unit = bot.scheduler.waits.seconds_per_unit
        alone = one_gpu.entries(bot.scheduler.queue)
        for fleet_entry, one in zip(entries[2:], alone[2:], strict=True):
            assert fleet_entry.wait_seconds is not None
            assert one.wait_seconds is not None
            assert fleet_entry.wait_seconds > 0
            assert fleet_entry.wait_seconds == pytest.approx(one.wait_seconds / (8 / 3))
    finally:
        for hold in held:
            await hold.open()
    for observer in observers:
        await asyncio.wait_for(observer.ended.wait(), DEADLINE)
    await fleet.stop_all()
    await until(lambda: bot.engine.pace().lanes == 0)
    await submit(bot, 20, Recorder(), steps=2)
    [waiting] = bot.scheduler.queue_entries()
    assert waiting.wait_seconds is None, "no worker: no wait to promise"


async def test_a_batch_in_flight_when_redis_loses_its_data_is_sent_again(fleet_bot, redis_server):
    bot, fleet = fleet_bot
    doomed = await fleet.start("doomed")
    held = HeldEngine(doomed)
    observer = Recorder()
    ticket = await submit(bot, 10, observer, steps=2)
    await until(lambda: doomed.busy != "")
    # Its worker dies and Redis comes back empty: nothing left there to run the batch.
    await fleet.kill("doomed")
    redis_server.kill()
    redis_server.start()
    survivor = await fleet.start("survivor")
    await asyncio.wait_for(observer.ended.wait(), DEADLINE)
    assert observer.outcomes
    assert not observer.failures
    assert survivor.served == 1, "the bot sent it again on its own"
    job = await bot.scheduler.jobs.get(ticket.job.id)
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1), "ended once, claimed once"
    assert await bot.dreams.credits.check() == []
    assert await bot.dreams.credits.balance(10) == 50 - ticket.job.cost, "charged once"
    await held.open()

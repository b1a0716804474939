"""`python -m bot worker`: a GPU machine serving the bot's batches from Redis.

It owns an engine (the same engine thread the bot runs in-process), reads batches with
the workers' consumer group, streams progress and outcomes back, and acknowledges a batch
only once its outcome is in Redis. While it runs a batch it renews its claim; a worker
that dies stops renewing, and after the lease another worker claims the batch and runs it.
It needs no database and no Discord token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from bot.fleet import heartbeats, protocol
from bot.fleet.files import FileCache
from bot.fleet.outcomes import ensure_group
from bot.fleet.protocol import BadMessage
from bot.fleet.routing import Deferral, Peer, read_unless_rivals_idle
from bot.fleet.takeover import Takeover
from bot.fleet.training import train
from engine.api.errors import EngineError, JobCancelled
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams
from engine.worker import EngineWorker

log = logging.getLogger(__name__)


class FleetWorker:
    def __init__(
        self,
        db: Any,  # redis-py's asyncio client
        engine: EngineWorker,
        name: str,
        workdir: Path,
        lease: float = protocol.LEASE_SECONDS,
    ) -> None:
        self.db = db
        self.engine = engine
        self.name = name
        self.workdir = workdir  # training checkpoints and class images, on this machine
        self.files = FileCache(workdir / "adapters")  # the LoRA files batches named
        self.lease = lease
        self.busy = ""
        self.served = 0
        self.seconds = 0.0
        self._emitting: set[asyncio.Task[None]] = set()  # progress lines on their way
        self.heartbeats = 0
        self.deferral = Deferral(db)  # leaves a batch to a better idle peer (routing.py)
        self.takeover = Takeover(db, name, lease)  # the batches of workers that died
        self.rounds = 0  # reads of the streams, each after a look at the peers

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Take batches until `stop` is set: a batch a dead worker left first, then new ones."""
        stop = stop or asyncio.Event()
        for stream in self.streams:
            await ensure_group(self.db, stream)
        await self.publish()
        await self._emit({"kind": protocol.READY, "batch": ""})  # the bot need not poll
        beating = asyncio.create_task(self._heartbeat(stop))
        try:
            while not stop.is_set():
                entry = await self._next()
                if entry is not None:
                    await self._serve_entry(*entry)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await beating
            with contextlib.suppress(RedisError):
                await heartbeats.forget(self.db, self.name)

    @property
    def streams(self) -> list[str]:
        """What this worker reads: the batches of each model it can load, and the rest."""
        return [protocol.model_stream(m) for m in sorted(self.engine.config.models)] + [
            protocol.BATCHES
        ]

    async def _next(self) -> Any:
        try:
            # A batch whose worker stopped renewing its claim (it died) first, when it is
            # time to look (takeover.py).
            if (left := await self.takeover.take(self.streams)) is not None:
                return left
            plan = await self.deferral.round(Peer.from_heartbeat(self.state()), self.models)
            self.rounds += 1
            answer: list[Any] = []
            for stream, rivals in plan.polled.items():  # a better peer may be free any moment
                answer = answer or await read_unless_rivals_idle(self.db, stream, rivals, self.name)
            if not answer:
                block = self.takeover.wait_ms(250 if plan.deferring else 1000)
                answer = await self._read(plan.blocking, block)
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            # Redis restarted without its data: the groups are made again, from the start
            # of each stream, so a batch the bot adds meanwhile is not missed.
            log.warning("Redis lost the workers' group (%s); making it again", error)
            with contextlib.suppress(RedisError):
                for stream in self.streams:
                    await ensure_group(self.db, stream)
            return None
        except (ConnectionError, OSError, RedisError) as error:
            log.warning("Redis unreachable (%s); trying again", error)
            await asyncio.sleep(2.0)
            return None
        for stream, entries in answer:
            for entry in entries:
                name = stream.decode() if isinstance(stream, bytes) else stream
                return name, *entry
        return None

    @property
    def models(self) -> list[str]:
        return sorted(self.engine.config.models)

    async def _read(self, streams: list[str], block: int) -> Any:
        return await self.db.xreadgroup(
            protocol.GROUP, self.name, dict.fromkeys(streams, ">"), count=1, block=block
        )

    async def _serve_entry(self, stream: str, entry_id: bytes, fields: dict[Any, Any]) -> None:
        try:
            request = protocol.field(fields, "request")
        except BadMessage as bad:
            log.warning("dropped entry %s on %s: %s", entry_id, stream, bad)
            await self.db.xack(stream, protocol.GROUP, entry_id)
            return
        batch = request["batch"]
        self.busy = batch
        # Said at once (peers and the bot route by it, routing.py), while the batch starts:
        # Redis's answer is not waited for before the GPU works, only before `finish`, so
        # the idle heartbeat always lands after the busy one.
        saying_busy = asyncio.create_task(self.publish())
        renewing = asyncio.create_task(self._renew(stream, entry_id))
        started = time.monotonic()
        try:
            event = await self._run(request)
            await saying_busy
        finally:
            renewing.cancel()
            saying_busy.cancel()
            self.busy = ""
        self.served += 1
        self.seconds += time.monotonic() - started
        await finish(self.db, self.name, self.state(), {**event, "batch": batch}, stream, entry_id)
        self.heartbeats += 1

    async def _run(self, request: dict[str, Any]) -> dict[str, Any]:
        batch = request["batch"]
        cancels: list[Any] = []
        watching = asyncio.create_task(self._watch_cancel(batch, cancels))
        try:
            outcome = await self._work(request, cancels)
        except JobCancelled:
            return {"kind": "failed", "cancelled": True}
        except EngineError as error:
            return {"kind": "failed", "message": error.user_message}
        except (BadMessage, KeyError, TypeError, ValueError) as bad:
            log.warning("batch %s is not one this worker can read: %s", batch, bad)
            return {"kind": "failed", "message": "The GPU worker could not read this job."}
        finally:
            watching.cancel()
        return {"kind": "done", "outcome": outcome}

    async def _work(self, request: dict[str, Any], cancels: list[Any]) -> Any:
        kind = request["kind"]
        batch = request["batch"]
        if kind == "generate":
            jobs = [
                EngineJob(
                    int(job["job_id"]),
                    # Its LoRA and embedding files, named by content: this machine's copies.
                    await self.files.local(self.db, GenerationParams.from_dict(job["params"])),
                    report=self._reporter(batch, int(job["job_id"])),
                    inputs=dict(job["inputs"]),
                )
                for job in request["jobs"]
            ]
            cancels.extend(job.cancel for job in jobs)
            return protocol.result_message(await self.engine.generate(jobs))
        if kind == "train":
            report = self._reporter(batch, int(request["job_id"]))
            return await train(self.db, self.engine, self.workdir, request, report, cancels)
        if kind == "safety":
            return await self.engine.check_safety(request["source"], list(request["images"]))
        if kind == "describe":
            return await self.engine.describe(bytes(request["image"]))
        if kind == "preload":
            return asdict(await self.engine.preload(str(request["model"])))
        raise BadMessage(f"unknown request {kind!r}")

    def _reporter(self, batch: str, job_id: int) -> Any:
        def report(progress: Any) -> None:
            values = asdict(progress)
            event = {"kind": "progress", "batch": batch, "job_id": job_id, "progress": values}
            task = asyncio.create_task(self._emit(event))
            self._emitting.add(task)
            task.add_done_callback(self._emitting.discard)

        return report

    async def _emit(self, event: dict[str, Any]) -> None:
        """A progress event; one lost while Redis does not answer costs nothing (the
        outcome goes by `finish`, which retries)."""
        with contextlib.suppress(ConnectionError, OSError, RedisError):
            await self.db.xadd(
                protocol.EVENTS,
                {"event": protocol.dumps(event)},
                maxlen=protocol.STREAM_LENGTH,
                approximate=True,
            )

    async def _renew(self, stream: str, entry_id: bytes) -> None:
        """Keep the claim on the batch fresh while it runs: a claim left idle past the lease
        means this worker died."""
        while True:
            await asyncio.sleep(self.lease / 3)
            with contextlib.suppress(RedisError):
                await self.db.xclaim(stream, protocol.GROUP, self.name, 0, [entry_id], justid=True)

    async def _watch_cancel(self, batch: str, cancels: list[Any]) -> None:
        while True:
            await asyncio.sleep(0.5)
            with contextlib.suppress(RedisError):
                if await self.db.exists(protocol.CANCELLED + batch):
                    for event in cancels:
                        event.set()
                    return

    def state(self) -> dict[str, str]:
        """What the heartbeat says: models, the one loaded, the batch it runs, its speed."""
        speed = self.seconds / self.served if self.served else 0.0
        return {
            "name": self.name,
            "models": ",".join(sorted(self.engine.config.models)),
            "loaded": self.engine.loaded_model or "",
            "busy": self.busy,
            "served": str(self.served),
            "seconds_per_batch": f"{speed:.3f}",
            "seen": f"{time.time():.0f}",
        }

    async def publish(self) -> None:
        with contextlib.suppress(RedisError):
            # One round trip, and atomic (heartbeats.py).
            async with self.db.pipeline(transaction=True) as pipe:
                heartbeats.write(pipe, self.name, self.state())
                await pipe.execute()
            self.heartbeats += 1

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.publish()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(protocol.HEARTBEAT_SECONDS):
                    await stop.wait()


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def run_worker(
    url: str, engine: EngineWorker, name: str, workdir: Path, lease: float
) -> None:
    """Serve until interrupted."""
    db: Any = redis.Redis.from_url(url)
    await db.ping()
    log.info(
        "worker %s serving %s from %s",
        name,
        ", ".join(engine.config.models),
        protocol.shown_url(url),
    )
    async with engine:
        try:
            await FleetWorker(db, engine, name, workdir, lease).serve()
        finally:
            await db.aclose()


async def finish(
    db: Any, name: str, state: dict[str, str], event: dict[str, Any], stream: str, entry_id: bytes
) -> None:
    """A worker's heartbeat idle (before the outcome is heard, so the bot finds it free), the
    batch's outcome, then its acknowledgement, in one transaction: one round trip on the
    path between two batches. The outcome is in Redis before (never without) the
    acknowledgement: a worker that dies first has its batch run again, and the bot keeps
    the first outcome it hears, so a retry after a lost reply changes nothing."""
    while True:
        try:
            async with db.pipeline(transaction=True) as pipe:
                heartbeats.write(pipe, name, state)
                pipe.xadd(
                    protocol.EVENTS,
                    {"event": protocol.dumps(event)},
                    maxlen=protocol.STREAM_LENGTH,
                    approximate=True,
                )
                pipe.xack(stream, protocol.GROUP, entry_id)
                await pipe.execute()
            return
        except (ConnectionError, OSError, RedisError) as error:
            log.warning("Redis unreachable with an outcome in hand (%s); retrying", error)
            await asyncio.sleep(2.0)

"""The bot's engine when its GPUs are workers on other machines: the EnginePort over
Redis Streams (bot/fleet/protocol.py). The scheduler holds one slot per idle worker, so
batches leave the bot's fair queue exactly as fast as the fleet frees up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Self, TypeVar

import redis.asyncio as redis
from redis.exceptions import RedisError

from bot.fleet import checkpoints, heartbeats, outcomes, protocol, training
from bot.fleet.files import FileSender
from bot.fleet.outcomes import Sent, ensure_group
from bot.fleet.slots import POLL_SECONDS, Slots
from bot.fleet.watch import FleetWatch
from engine.api.errors import EngineError, EngineStopped
from engine.api.jobs import EngineJob, TrainingJob, TrainingOutcome
from engine.api.params import (
    GenerationParams,
    GenerationResult,
    ModelInfo,
    Progress,
)
from engine.api.port import Pace, WorkerState
from engine.api.training_params import CHECKPOINT_FILE

log = logging.getLogger(__name__)

T = TypeVar("T")
UNREACHABLE = "The GPU workers cannot be reached right now."


class RedisEngine:
    def __init__(self, url: str, models: Sequence[str]) -> None:
        self.url = url
        self._streams = [protocol.model_stream(model) for model in models] + [protocol.BATCHES]
        # redis-py's asyncio client (its stubs type every answer as sync-or-async: Any here).
        self._redis: Any = None
        self._sent: dict[str, Sent] = {}
        self._reader: asyncio.Task[None] | None = None
        self.watch = FleetWatch()  # the live workers, and whether Redis answers
        self._watching: asyncio.Task[None] | None = None
        self.slots = Slots(lambda: self._db, self._sent)  # one per idle worker
        self._started = False
        self._stopping = False
        self.files = FileSender()  # the LoRA and embedding files batches need

    @property
    def running(self) -> bool:
        return self._started and not self._stopping

    def start(self) -> None:
        self._started = True

    async def __aenter__(self) -> Self:
        self.start()
        self._redis = redis.Redis.from_url(self.url)
        try:
            await self._redis.ping()
            for stream in self._streams:
                await ensure_group(self._redis, stream)
            # Outcomes from now on: a batch sent before a restart is sent again by recovery.
            last = await self._redis.xrevrange(protocol.EVENTS, count=1)
        except RedisError as error:
            raise EngineError(
                f"Redis at {protocol.shown_url(self.url)} did not answer ({error})"
            ) from None
        start = last[0][0] if last else b"0-0"
        self._reader = asyncio.create_task(self._read_events(start), name="sd-fleet-events")
        self._watching = asyncio.create_task(
            self.watch.run(lambda: self._db, self._check_sent), name="sd-fleet-watch"
        )
        log.info("GPU workers served through Redis at %s", protocol.shown_url(self.url))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._reader, self._watching):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, EngineStopped):
                    await task
        for sent in self._sent.values():
            if not sent.outcome.done():
                sent.outcome.set_exception(EngineStopped())
        if self._redis is not None:
            await self._redis.aclose()

    # -- slots --------------------------------------------------------------------------

    async def free_slot(self) -> Callable[[], None]:
        """Wait for a worker with nothing to do (one batch each) that no batch waiting in
        Redis could go to (slots.py): woken at once when an outcome arrives (the worker is
        free before the bot has stored it), and every POLL_SECONDS for workers that start,
        stop or take a batch elsewhere."""
        return await self.slots.take()

    def pace(self) -> Pace:
        return self.watch.pace()

    async def pace_changed(self, seen: Pace) -> Pace:
        return await self.watch.pace_changed(seen)

    def batch_images(self, params: GenerationParams) -> int | None:
        # Workers' cards differ and are not advertised yet: batches as SDBOT_MAX_BATCH says.
        return None

    async def workers(self) -> list[WorkerState]:
        """Each live worker, from its heartbeat: models, whether it runs a batch, speed."""
        return await live_workers(self._db)

    # -- the port -----------------------------------------------------------------------

    async def generate(self, jobs: Sequence[EngineJob]) -> list[GenerationResult]:
        # LoRA and embedding files go by content, never by a path on this disk (files.py).
        shared = [
            await self._redis_answering("a LoRA file", partial(self.files.shared, self._db, p))
            for p in (job.params for job in jobs)
        ]
        request = {
            "kind": "generate",
            "jobs": [
                {"job_id": job.job_id, "params": params.to_dict(), "inputs": job.inputs}
                for job, params in zip(jobs, shared, strict=True)
            ],
        }
        reports = {job.job_id: job.report for job in jobs}
        model = jobs[0].params.model  # a batch is of one model (its batch key)
        outcome = await self._send(request, model, reports, Progress, [job.cancel for job in jobs])
        return protocol.results_from(outcome)

    async def train(self, job: TrainingJob) -> TrainingOutcome:
        # The bot's copy of its checkpoint where the worker looks (Redis may have lost it).
        checkpoint = Path(job.workdir) / CHECKPOINT_FILE
        offer = partial(checkpoints.offer, self._db, job.job_id, checkpoint)
        await self._redis_answering("a checkpoint", offer)
        return await training.send(self._db, self._send, job)

    async def check_safety(self, source: str, images: Sequence[bytes]) -> list[bool]:
        outcome = await self._send({"kind": "safety", "source": source, "images": list(images)})
        return [bool(flag) for flag in outcome]

    async def describe(self, png: bytes) -> list[str]:
        # Any worker serves it (the batches stream): it needs no Stable Diffusion model.
        return [str(prompt) for prompt in await self._send({"kind": "describe", "image": png})]

    async def preload(self, model: str) -> ModelInfo:
        return ModelInfo(**await self._send({"kind": "preload", "model": model}, model))

    # -- sending and hearing back -------------------------------------------------------

    @property
    def _db(self) -> Any:
        if self._redis is None or self._stopping:
            raise EngineStopped()
        return self._redis

    async def _send(
        self,
        request: dict[str, Any],
        model: str | None = None,
        reports: dict[int, Callable[[Any], None]] | None = None,
        progress: Callable[..., Any] = Progress,
        cancels: Sequence[Any] = (),
    ) -> Any:
        batch = uuid.uuid4().hex
        stream = protocol.model_stream(model) if model else protocol.BATCHES
        sent = Sent(
            asyncio.get_running_loop().create_future(), reports or {}, progress, model, stream
        )
        self._sent[batch] = sent
        self.slots.sent()
        try:
            fields = {"request": protocol.dumps({**request, "batch": batch})}
            await self._redis_answering(
                "a batch", partial(outcomes.add, self._db, batch, stream, fields)
            )
            sent.fields = fields
            watch = asyncio.create_task(self._pass_on_cancels(batch, cancels))
            try:
                return await sent.outcome
            finally:
                watch.cancel()
        finally:
            self._sent.pop(batch, None)
            self.slots.freed()
            with contextlib.suppress(RedisError, EngineStopped):  # a mark left costs nothing
                await self._db.srem(outcomes.SENT_MARKS, batch)

    async def _redis_answering(self, what: str, work: Callable[[], Awaitable[T]]) -> T:
        return await _waiting_out_redis(what, work, lambda: self._stopping)

    async def _check_sent(self) -> None:
        """Each round of the watch: batches Redis lost with its data are sent again."""
        await outcomes.send_lost_again(self._db, self._sent)

    async def _pass_on_cancels(self, batch: str, cancels: Sequence[Any]) -> None:
        """A member's cancel (the scheduler sets the job's event) reaches the worker, which
        stops at its next step, as the engine thread does."""
        # Polled: the events are threading.Events, set by the scheduler on the loop.
        while not any(event.is_set() for event in cancels):  # noqa: ASYNC110
            await asyncio.sleep(POLL_SECONDS)
        with contextlib.suppress(RedisError):
            await self._db.set(protocol.CANCELLED + batch, "1", ex=3600)

    async def _read_events(self, last: Any) -> None:
        # The flag, not only the cancel: redis-py turns a cancel in the middle of a blocking
        # read into a connection error, which would otherwise be waited out forever.
        while not self._stopping:
            try:
                answer = await self._redis.xread({protocol.EVENTS: last}, block=1000, count=100)
            except asyncio.CancelledError:
                raise
            except (ConnectionError, OSError, RedisError) as error:
                if self._stopping:
                    return
                log.warning("Redis unreachable while waiting for outcomes (%s)", error)
                self.watch.unreachable(error)
                await asyncio.sleep(POLL_SECONDS * 4)
                continue
            for _stream, entries in answer:
                for entry_id, fields in entries:
                    last = entry_id
                    if outcomes.hear(self._sent, fields):
                        self.slots.freed()  # its worker is idle: the next batch goes at once


async def _waiting_out_redis(
    what: str, work: Callable[[], Awaitable[T]], stopping: Callable[[], bool]
) -> T:
    while True:
        try:
            return await work()
        except (ConnectionError, OSError, RedisError) as error:
            if stopping():
                raise EngineStopped() from None
            log.warning("Redis refused %s (%s); trying again", what, error)
            await asyncio.sleep(POLL_SECONDS * 4)


async def live_workers(db: Any) -> list[WorkerState]:
    """Each worker whose heartbeat is in Redis, by name."""
    found = []
    for values, _age in await heartbeats.read_all(db):
        with contextlib.suppress(KeyError, ValueError):  # a hash that is not a heartbeat
            found.append(worker_state(values, time.time()))
    return sorted(found, key=lambda worker: worker.name)


def worker_state(values: dict[str, str], now: float) -> WorkerState:
    served = int(values["served"])
    return WorkerState(
        values["name"],
        tuple(model for model in values["models"].split(",") if model),
        bool(values["busy"]),
        served,
        float(values["seconds_per_batch"]) if served else None,
        max(0.0, now - float(values["seen"])),
    )

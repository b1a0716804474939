"""The bot's side of the requests it has out on the streams: the outcomes and progress
lines it hears back on `sdbot:events`, and the batches it sends again when Redis lost them
(restarted without its data) while they were out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from bot.fleet import protocol
from bot.fleet.protocol import BadMessage
from engine.api.errors import EngineError, JobCancelled
from engine.api.params import Progress

log = logging.getLogger(__name__)

# The set of the batches out on the streams, added with each batch in one transaction:
# a batch missing from it was lost with Redis's data, and is sent again.
SENT_MARKS = "sdbot:sent"


@dataclass(slots=True)
class Sent:
    """A request out on the stream, waiting for its outcome."""

    outcome: asyncio.Future[Any]
    reports: dict[int, Callable[[Any], None]] = field(default_factory=dict)
    progress: Callable[..., Any] = Progress
    model: str | None = None  # its stream's model; None: any worker serves it
    # Where it went and what it said, once it is in Redis (to send it again).
    stream: str = ""
    fields: dict[str, str] | None = None


async def add(db: Any, batch: str, stream: str, fields: dict[str, str]) -> None:
    """The batch on its stream and among the marks, both or neither."""
    pipe = db.pipeline(transaction=True)
    pipe.xadd(stream, fields, maxlen=protocol.STREAM_LENGTH, approximate=True)
    pipe.sadd(SENT_MARKS, batch)
    await pipe.execute()


async def send_lost_again(db: Any, sent: dict[str, Sent]) -> None:
    """Every batch out whose mark is gone, sent again: its entry went with the mark, so no
    worker can be running it from Redis any more (one that still runs it from before
    sends an outcome too; the first heard counts, the other is ignored)."""
    out = [(batch, s) for batch, s in sent.items() if s.fields is not None]
    if not out:
        return
    present = await db.smismember(SENT_MARKS, [batch for batch, _ in out])
    for (batch, request), there in zip(out, present, strict=True):
        if there or sent.get(batch) is not request or request.outcome.done():
            continue  # still in Redis, or it ended while we looked
        log.warning("Redis lost batch %s (restarted without its data?); sending it again", batch)
        assert request.fields is not None
        await ensure_group(db, request.stream)
        await add(db, batch, request.stream, request.fields)


def hear(sent: dict[str, Sent], fields: dict[Any, Any]) -> bool:
    """An entry of `sdbot:events`, delivered to whoever waits for its batch: True when a
    worker is idle now (a batch's outcome, or a worker that has just started), False for a
    progress line or an entry ignored."""
    try:
        event = protocol.field(fields, "event")
    except BadMessage as bad:
        log.warning("ignored a message on %s: %s", protocol.EVENTS, bad)
        return False
    kind = event.get("kind")
    if kind == protocol.READY:  # its heartbeat is in Redis: a slot may be free at once
        return True
    request = sent.get(event["batch"])
    if request is None or request.outcome.done():
        # Not one this bot is waiting for: sent before a restart (recovery sent it
        # again), already answered by a worker thought dead, or not ours at all.
        log.info("ignored an outcome for batch %s, which nobody waits for", event["batch"])
        return kind in ("done", "failed")  # its worker is idle all the same
    try:
        _apply(request, event)
    except (BadMessage, KeyError, TypeError, ValueError) as bad:
        log.warning("ignored a malformed outcome for batch %s: %s", event["batch"], bad)
    return request.outcome.done()


def _apply(sent: Sent, event: dict[str, Any]) -> None:
    """An outcome or a progress line, delivered to who waits for it."""
    kind = event["kind"]
    if kind == "progress":
        report = sent.reports.get(int(event["job_id"]))
        if report is not None:
            report(sent.progress(**event["progress"]))
    elif kind == "done":
        sent.outcome.set_result(event["outcome"])
    elif kind == "failed":
        if event.get("cancelled"):
            sent.outcome.set_exception(JobCancelled())
        else:
            sent.outcome.set_exception(EngineError(str(event["message"])))
    else:
        raise BadMessage(f"unknown event {kind!r}")


async def ensure_group(db: Any, stream: str) -> None:
    """The workers' consumer group on a batches stream, made once by whoever comes first
    (before anything is added, so no batch is ever missed)."""
    try:
        await db.xgroup_create(stream, protocol.GROUP, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise

"""The messages between the bot and its GPU workers, and where they go in Redis.

`sdbot:batches:<model>` is a stream read by the consumer group of the workers that can
load that model: one entry per batch the bot releases. A worker keeps its claim fresh
while it runs (XCLAIM of its own entry), so an entry idle for longer than the lease
belongs to a worker that died and another takes it (XAUTOCLAIM). `sdbot:events` carries
progress and outcomes back; the bot reads it. Each worker's heartbeat is a hash that
expires, its name in a set beside it (bot/fleet/heartbeats.py). Messages are JSON, bytes
as base64; never pickle, so a worker can send nothing but data.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

from engine.api.params import GeneratedImage, GenerationResult

BATCHES = "sdbot:batches"  # requests any worker can serve (a safety check)


def model_stream(model: str) -> str:
    """The batches for one model: read only by the workers that can load it, so a batch
    never reaches a worker without its model."""
    return f"{BATCHES}:{model}"


EVENTS = "sdbot:events"
# The event a worker sends once it has started and its heartbeat is in Redis (batch ""):
# the bot looks for a free slot at once rather than at its next poll.
READY = "ready"
GROUP = "workers"
WORKERS = "sdbot:worker:"  # + name: a hash with the worker's models, state and speed
WORKER_NAMES = "sdbot:workers"  # a set of the names of the workers with such a hash
CANCELLED = "sdbot:cancel:"  # + batch id: set when a member cancels a job of that batch
# A batch whose worker has not renewed its claim for this long is run by another worker.
LEASE_SECONDS = 30.0
HEARTBEAT_SECONDS = 5.0
# A worker not heard from for this long is gone (its hash expires).
WORKER_TTL_SECONDS = 20
# Streams are trimmed to about this many entries: outcomes are read within seconds.
STREAM_LENGTH = 10_000
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


class BadMessage(ValueError):
    """A stream entry that is not one of ours (malformed, or from another program)."""


def dumps(value: Any) -> str:
    return json.dumps(value, default=_bytes_as_text, separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    try:
        return json.loads(text, object_hook=_text_as_bytes)
    except (ValueError, TypeError) as error:
        raise BadMessage(f"not a message of ours ({error})") from None


def _bytes_as_text(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} cannot travel in a message")


def _text_as_bytes(value: dict[str, Any]) -> Any:
    if set(value) == {"$b"}:
        return base64.b64decode(value["$b"])
    return value


def field(entry: dict[Any, Any], name: str) -> dict[str, Any]:
    """A stream entry's JSON field, decoded; BadMessage when it is not a message of ours."""
    raw = entry.get(name) or entry.get(name.encode())
    if raw is None:
        raise BadMessage(f"no {name!r} field")
    message = loads(raw)
    if not isinstance(message, dict) or not isinstance(message.get("batch"), str):
        raise BadMessage("no batch id")
    return message


def result_message(results: list[GenerationResult]) -> list[dict[str, Any]]:
    return [
        {
            "images": [asdict(image) for image in result.images],
            "model_hash": result.model_hash,
            "seconds": result.seconds,
        }
        for result in results
    ]


def results_from(message: list[dict[str, Any]]) -> list[GenerationResult]:
    try:
        return [
            GenerationResult(
                [GeneratedImage(**image) for image in result["images"]],
                result["model_hash"],
                float(result["seconds"]),
            )
            for result in message
        ]
    except (KeyError, TypeError) as error:
        raise BadMessage(f"a result that is not one ({error})") from None


def queue_url_problem(url: str) -> str | None:
    """Why SDBOT_QUEUE_URL cannot be used, as the end of a sentence naming it; None when it
    can. A Redis that
    any machine can reach without a password would let anyone post as the bot's workers."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return "must start with redis:// (or rediss:// for TLS)"
    if not parts.hostname:
        return "names no host, e.g. redis://:password@gpu-box:6379/0"
    if parts.hostname not in LOOPBACK and not parts.password:
        return (
            f"reaches {parts.hostname} without a password: set Redis's requirepass and put "
            "it in the URL (redis://:password@host:6379/0)"
        )
    return None


def shown_url(url: str) -> str:
    """The URL as it may be logged: the password replaced."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)

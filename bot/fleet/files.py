"""LoRA and embedding files travelling with the batches that use them, by content.

A worker has no access to the bot's disk, and never uses a path from a message: a batch's
parameters name each adapter file as `sha256:<hex><suffix>`. The bot puts the file's bytes
in Redis under `sdbot:file:<hex>` (a list of chunks: a Redis string is at most 512 MB, and
a worker then reads one chunk at a time), kept for a day after the last batch that used
it. A worker fetches a file it does not have once, checks its sha256, and keeps it in its
own folder under the same name, the least recently used going past its budget.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from bot.fleet.protocol import BadMessage
from engine.api.errors import EngineError
from engine.api.hashes import FileHashCache
from engine.api.params import GenerationParams

log = logging.getLogger(__name__)

FILES = "sdbot:file:"  # + sha256: the file's bytes, a list of chunks
CHUNK_BYTES = 4 * 1024 * 1024
FILE_TTL_SECONDS = 24 * 3600
# What a worker keeps of the files it fetched; SDXL LoRAs are up to ~1 GB.
CACHE_BYTES = 20 * 1024**3
_SUFFIX = re.compile(r"\.[a-z0-9]{1,16}")  # the engine tells .safetensors from other formats
_REFERENCE = re.compile(rf"sha256:([0-9a-f]{{64}})((?:{_SUFFIX.pattern})?)")
NOT_FETCHED = "The GPU worker could not get the file of LoRA or embedding {name}; try again."


def _adapter_files(params: GenerationParams) -> Iterator[tuple[str, str]]:
    """(name, file) of every LoRA and embedding a job's parameters name."""
    for name, path, _ in params.loras:
        yield name, path
    for token, path in params.embeddings:
        yield token, path


def _with_files(params: GenerationParams, files: Mapping[str, str]) -> GenerationParams:
    """The parameters with each adapter file replaced by `files[file]`."""
    loras = tuple((name, files[path], weight) for name, path, weight in params.loras)
    embeddings = tuple((token, files[path]) for token, path in params.embeddings)
    return replace(params, loras=loras, embeddings=embeddings)


def reference(sha256: str, path: Path) -> str:
    suffix = path.suffix.lower()
    return f"sha256:{sha256}{suffix if _SUFFIX.fullmatch(suffix) else ''}"


class FileSender:
    """The bot's side: the files a batch needs, in Redis before the batch is."""

    def __init__(self) -> None:
        self.hashes = FileHashCache()
        self.uploads = 0  # files sent; the tests check each is sent once
        self._sending: dict[str, asyncio.Future[None]] = {}

    async def shared(self, db: Any, params: GenerationParams) -> GenerationParams:
        """The parameters as a worker gets them: each file named by its content, which is
        in Redis for a day from now. EngineError when a file is gone from the bot's disk."""
        files = {}
        for name, path in _adapter_files(params):
            try:
                digest = await asyncio.to_thread(self.hashes.sha256, Path(path))
                await self._ensure(db, digest, Path(path))
            except ConnectionError:  # Redis's socket, not the file: the caller waits it out
                raise
            except OSError:
                raise EngineError(f"The file of {name} is no longer on the bot's disk.") from None
            files[path] = reference(digest, Path(path))
        return _with_files(params, files)

    async def _ensure(self, db: Any, digest: str, path: Path) -> None:
        if await db.expire(FILES + digest, FILE_TTL_SECONDS):  # there: its day starts again
            return
        sending = self._sending.get(digest)
        if sending is None:  # one upload of a file, however many batches need it at once
            sending = asyncio.ensure_future(self._upload(db, digest, path))
            self._sending[digest] = sending
            sending.add_done_callback(lambda _: self._sending.pop(digest, None))
        await asyncio.shield(sending)

    async def _upload(self, db: Any, digest: str, path: Path) -> None:
        # Written under a key of its own and renamed: a worker never reads half a file.
        partial = f"{FILES}{digest}:upload:{uuid.uuid4().hex}"
        sent = 0
        with path.open("rb") as handle:
            while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                await db.rpush(partial, chunk)
                await db.expire(partial, FILE_TTL_SECONDS)
                sent += len(chunk)
        if not sent:  # an empty file: a Redis list cannot be empty
            await db.rpush(partial, b"")
        await db.rename(partial, FILES + digest)
        await db.expire(FILES + digest, FILE_TTL_SECONDS)
        self.uploads += 1
        log.info("sent %s (%d bytes) to the GPU workers as %s", path.name, sent, digest)


class FileCache:
    """A worker's side: the files its batches name, fetched once and kept."""

    def __init__(self, folder: Path, budget: int = CACHE_BYTES) -> None:
        self.folder = folder
        self.budget = budget
        self.fetches = 0  # files fetched from Redis; the tests check each is fetched once

    async def local(self, db: Any, params: GenerationParams) -> GenerationParams:
        """The parameters with each file reference replaced by this machine's copy.
        BadMessage for a file named any other way (a path is never used)."""
        files = {}
        for name, ref in _adapter_files(params):
            match = _REFERENCE.fullmatch(ref)
            if match is None:
                raise BadMessage(f"{name} is named by a path, not by its content")
            digest, suffix = match.groups()
            path = self.folder / f"{digest}{suffix}"
            if path.is_file():
                await asyncio.to_thread(os.utime, path)  # recently used: kept longest
            else:
                await self._fetch(db, digest, path, name)
            files[ref] = str(path)
        return _with_files(params, files)

    async def _fetch(self, db: Any, digest: str, path: Path, name: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        check = hashlib.sha256()
        try:
            with partial.open("wb") as handle:
                chunks = await db.llen(FILES + digest)
                for index in range(chunks):
                    [chunk] = await db.lrange(FILES + digest, index, index)
                    check.update(chunk)
                    await asyncio.to_thread(handle.write, chunk)
            if not chunks or check.hexdigest() != digest:
                raise EngineError(NOT_FETCHED.format(name=name))
            os.replace(partial, path)
        except (RedisError, OSError, ValueError) as error:
            log.warning("fetching %s for %s failed: %s", digest, name, error)
            raise EngineError(NOT_FETCHED.format(name=name)) from None
        finally:
            partial.unlink(missing_ok=True)
        self.fetches += 1
        await asyncio.to_thread(self._trim, path)

    def _trim(self, keep: Path) -> None:
        """The least recently used files out, past the budget; never the one just fetched."""
        files = sorted(self.folder.glob("[0-9a-f]*"), key=lambda p: p.stat().st_mtime_ns)
        total = sum(p.stat().st_size for p in files)
        for old in files:
            if total <= self.budget:
                break
            if old != keep:
                total -= old.stat().st_size
                old.unlink(missing_ok=True)

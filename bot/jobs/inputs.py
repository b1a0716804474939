"""Input images of jobs, stored by content: attachment URLs expire, the bytes do not.

A job's parameters name its inputs by key (the sha256 of the bytes), so a job rebuilt
from its row after a restart finds them again, and the same picture sent twice is
stored once.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from pathlib import Path

from engine.api.params import GenerationParams

# What an input key looks like: the sha256 of the stored PNG, in hex.
INPUT_KEY = re.compile(r"^[0-9a-f]{64}$")


def input_key(data: bytes) -> str:
    """The key `put` stores `data` under, known before anything is written."""
    return hashlib.sha256(data).hexdigest()


def input_path(folder: Path, key: str) -> Path:
    """Where the input `key` (already matched against INPUT_KEY) lives under `folder`."""
    return folder / key[:2] / f"{key}.png"


class MissingInput(Exception):
    """An input a job needs is no longer on disk."""


class InputStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, key: str) -> Path:
        if not INPUT_KEY.match(key):  # keys come from rows; never let one build a path
            raise MissingInput(f"not an input key: {key!r}")
        return input_path(self.folder, key)

    def put(self, data: bytes) -> str:
        key = input_key(data)
        path = self._path(key)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written under a temporary name and renamed: a crash never leaves half a file.
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
                handle.write(data)
            os.replace(handle.name, path)
        return key

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise MissingInput(f"input {key} is gone") from None

    async def put_async(self, data: bytes) -> str:
        return await asyncio.to_thread(self.put, data)

    async def for_params(self, params: GenerationParams) -> dict[str, bytes]:
        """The bytes of every input the parameters name; MissingInput if one is gone."""
        keys = params.input_keys
        if not keys:
            return {}
        values = await asyncio.to_thread(lambda: [self.get(key) for key in keys])
        return dict(zip(keys, values, strict=True))

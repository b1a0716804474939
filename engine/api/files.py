"""Writing a file so that a crash leaves the old one or the new one, never half of one:
for the engine's trained files and checkpoints, and the copies the bot keeps of them."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """`data` at `path`, written beside it, flushed to the disk and renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)

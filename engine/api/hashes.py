"""A1111's model hash of a checkpoint file: torch-free, so `doctor` can show it too."""

from __future__ import annotations

import hashlib
from pathlib import Path


class FileHashCache:
    """A1111's model hash (first 10 hex digits of the file's sha256), once per file version."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}

    def short_hash(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._known:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            self._known[key] = digest.hexdigest()[:10]
        return self._known[key]

"""The owner's folder of LoRA files (SDBOT_LORA_DIR), used as A1111 uses its models/Lora:
every member may name a file in it, or in its subfolders, as `<lora:file-name:0.8>`.

Names never become paths: the folder is listed, and a tag's name is looked up among what
was found, so `<lora:../../etc/passwd:1>` names nothing. A name is, in this order:

1. a file's name without `.safetensors`, exactly (A1111's lookup); two files of one name
   in different subfolders: the one nearest the top, then the first in path order;
2. the alias in a file's metadata (`ss_output_name`, as kohya writes it), when only one
   file has that alias (A1111 refuses aliases two files share, too);
3. either of those written as the bot writes names (lowercase, `-` for spaces: what the
   /dream `lora` option puts in the prompt), when only one file matches.

The folder is listed again on each lookup (a file the owner adds is usable at once); each
file's header is read once per version (size, modification time).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from engine.api.lora_files import (
    SAFETENSORS,
    LoraFileError,
    SafetensorsHeader,
    check_loadable,
    lora_family,
    read_header,
)
from engine.api.params import InvalidParams
from engine.api.specs import ModelFamily
from engine.api.training_params import sanitize_name

log = logging.getLogger(__name__)

# A LoRA past this is not one a member should make the GPU load (rank-128 SDXL LoRAs are
# ~900 MB), nor one to send to the GPU workers.
MAX_LORA_BYTES = 2 * 1024**3


@dataclass(frozen=True, slots=True)
class FolderLora:
    name: str  # the file's name without .safetensors
    path: Path
    size: int
    mtime_ns: int
    alias: str | None = None  # ss_output_name, when it differs from the name
    family: ModelFamily | None = None  # None: the file does not say
    problem: LoraFileError | None = None  # why it cannot be used, found when it was read
    header: SafetensorsHeader | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None


class LoraFolder:
    def __init__(self, root: Path, max_bytes: int = MAX_LORA_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._read: dict[str, FolderLora] = {}  # by path; reused while size and mtime hold
        self._lock = asyncio.Lock()

    async def entries(self) -> list[FolderLora]:
        """Every .safetensors file in the folder, the nearest the top first."""
        async with self._lock:  # one listing at a time; the next one reuses its reads
            return await asyncio.to_thread(self._scan)

    async def find(self, name: str) -> FolderLora | None:
        """The file a tag's name means (see the module's docstring), usable or not."""
        return pick(await self.entries(), name)

    # -- listing ------------------------------------------------------------------------

    def _scan(self) -> list[FolderLora]:
        found = []
        for path in self._files():
            try:
                stat = path.stat()
            except OSError:  # removed while listed
                continue
            known = self._read.get(str(path))
            if known is None or (known.size, known.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                known = self._entry(path, stat.st_size, stat.st_mtime_ns)
            found.append(known)
        self._read = {str(entry.path): entry for entry in found}
        return found

    def _files(self) -> list[Path]:
        """The folder's .safetensors files, following links (as A1111 does) but never into
        a folder twice; hidden files (partial downloads) left out."""
        files: list[tuple[int, str, Path]] = []
        seen: set[str] = set()
        for folder, subfolders, names in os.walk(self.root, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                subfolders.clear()
                continue
            seen.add(real)
            subfolders.sort()
            for file_name in names:
                if file_name.startswith(".") or not file_name.lower().endswith(SAFETENSORS):
                    continue
                path = Path(folder) / file_name
                relative = path.relative_to(self.root)
                files.append((len(relative.parts), str(relative), path))
        return [path for _, _, path in sorted(files)]

    def _entry(self, path: Path, size: int, mtime_ns: int) -> FolderLora:
        name = path.name[: -len(SAFETENSORS)]
        if size > self.max_bytes:
            too_big = LoraFileError(
                f"is {size / 1024**3:.1f} GB, over this bot's limit of "
                f"{self.max_bytes / 1024**3:.0f} GB for a LoRA file"
            )
            return FolderLora(name, path, size, mtime_ns, problem=too_big)
        try:
            header = read_header(path)
            check_loadable(header)
        except LoraFileError as problem:
            log.warning("LoRA folder: %s cannot be used: %s", path, problem.reason)
            return FolderLora(name, path, size, mtime_ns, problem=problem)
        alias = header.metadata.get("ss_output_name", "").strip() or None
        return FolderLora(
            name,
            path,
            size,
            mtime_ns,
            alias=alias if alias != name else None,
            family=lora_family(header),
            header=header,
        )


def pick(entries: list[FolderLora], name: str) -> FolderLora | None:
    """The entry `name` means among `entries` (in the folder's order)."""
    wanted = name.strip()
    exact = next((entry for entry in entries if entry.name == wanted), None)
    if exact is not None:
        return exact
    aliased = [entry for entry in entries if entry.alias == wanted]
    if len(aliased) == 1:
        return aliased[0]
    loose = _loose(wanted)
    if loose is None:
        return None
    matches = [entry for entry in entries if loose in (_loose(entry.name), _loose(entry.alias))]
    return matches[0] if len(matches) == 1 else None


def _loose(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return sanitize_name(text)
    except InvalidParams:  # no letters or digits at all: it matches nothing loosely
        return None

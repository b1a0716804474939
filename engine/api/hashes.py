"""A1111's hashes of model, LoRA and embedding files, and the infotext keys that carry them.

Torch-free, so `doctor` can show a model's hash and the GPU workers and the bot compute the
same values. A1111 writes:

- `Model hash`: the first 10 hex digits of the checkpoint file's sha256;
- `Lora hashes`: per LoRA, the first 12 hex digits of the sha256 of a .safetensors file's
  tensor data, its JSON header excluded (kohya's "addnet" hash, civitai's AutoV3), so
  editing a file's metadata does not change it; the whole file's for other formats;
- `TI hashes`: per embedding, the first 12 hex digits of the whole file's sha256.

A1111 takes a LoRA's hash from its header's `sshs_model_hash` when there is one; here it is
always computed (kohya writes the same value, and a header may claim anything). A file /train
wrote names the hash of its A1111 copy (`sdbot.a1111_hash`): that copy is what exists
outside this bot, in A1111, ComfyUI or on civitai.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from engine.api.infotext import quote
from engine.api.lora_files import SAFETENSORS, LoraFileError, read_header

# Written by /train into the file this bot loads: the hash of the A1111 copy beside it.
A1111_HASH_KEY = "sdbot.a1111_hash"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class FileHashCache:
    """Hashes of files, each computed once per file version (path, size, mtime)."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str, int, int], str] = {}

    def _cached(self, kind: str, path: Path, offset: int | None = None) -> str:
        stat = path.stat()
        key = (kind, str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._known:
            with path.open("rb") as handle:
                if offset is None:
                    offset = _header_end(handle) if kind == "tensors" else 0
                handle.seek(offset)
                self._known[key] = _sha256_of(handle)
        return self._known[key]

    def short_hash(self, path: Path) -> str:
        """A1111's model hash: the first 10 hex digits of the file's sha256."""
        return self.sha256(path)[:10]

    def sha256(self, path: Path) -> str:
        """The whole file's sha256, in hex."""
        return self._cached("file", path)

    def tensor_sha256(self, path: Path) -> str:
        """The sha256 of a .safetensors file's tensor data (its header excluded), in hex."""
        return self._cached("tensors", path)

    def lora_short_hash(self, path: Path) -> str:
        """A1111's LoRA hash of the file (see the module's docstring)."""
        if path.suffix.lower() != SAFETENSORS:
            return self.sha256(path)[:12]
        return (_a1111_copy_hash(path) or self.tensor_sha256(path))[:12]

    def embedding_short_hash(self, path: Path) -> str:
        """A1111's embedding hash (`TI hashes`), or its A1111 copy's for a file /train wrote."""
        copy = _a1111_copy_hash(path) if path.suffix.lower() == SAFETENSORS else None
        return (copy or self.sha256(path))[:12]


def _header_end(handle: BinaryIO) -> int:
    return 8 + int.from_bytes(handle.read(8), "little")


def _sha256_of(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _a1111_copy_hash(path: Path) -> str | None:
    try:
        stored = read_header(path).metadata.get(A1111_HASH_KEY, "")
    except LoraFileError:
        return None
    return stored if _SHA256.fullmatch(stored) else None


def tensor_data_sha256(data: bytes) -> str:
    """The LoRA hash's sha256 of a .safetensors file held in memory (before writing it)."""
    header_length = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header_length :]).hexdigest()


# -- Infotext ---------------------------------------------------------------------------------


def hash_list(items: Sequence[tuple[str, str]]) -> str:
    """`name: hash, other: hash`, as A1111 joins them; it drops `:` and `,` from the names,
    which would break its own parsing."""
    return ", ".join(
        f"{name.replace(':', '').replace(',', '')}: {digest}" for name, digest in items
    )


def lora_hashes(loras: Sequence[tuple[str, Path]], cache: FileHashCache | None = None) -> str:
    """The value of A1111's `Lora hashes` key for (name as the prompt's tag writes it, file).
    Pass it unquoted as `build_infotext(..., extra={"Lora hashes": value})`, which quotes it."""
    hashes = cache or FileHashCache()
    return hash_list([(name, hashes.lora_short_hash(path)) for name, path in loras])


def embedding_hashes(
    embeddings: Sequence[tuple[str, Path]], cache: FileHashCache | None = None
) -> str:
    """The value of A1111's `TI hashes` key (1.6+) for (token, file) of a prompt."""
    hashes = cache or FileHashCache()
    return hash_list([(name, hashes.embedding_short_hash(path)) for name, path in embeddings])


def lora_infotext(loras: Sequence[tuple[str, Path]], cache: FileHashCache | None = None) -> str:
    """`Lora hashes: "name: 1234567890ab, other: ..."`, as A1111 writes it after `RNG` and
    before `Version` on the parameters line (its extra_generation_params). The weights are
    not here: A1111 keeps the `<lora:name:weight>` tags in the infotext's prompt."""
    return f"Lora hashes: {quote(lora_hashes(loras, cache))}" if loras else ""


def embedding_infotext(
    embeddings: Sequence[tuple[str, Path]], cache: FileHashCache | None = None
) -> str:
    """`TI hashes: "token: 1234567890ab"` for the embeddings a prompt used (A1111 1.6+)."""
    return f"TI hashes: {quote(embedding_hashes(embeddings, cache))}" if embeddings else ""

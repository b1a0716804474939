"""A member's training photos: attachments or one .zip, checked and made square.

Pillow only, no torch: the bot prepares the images when the command arrives, stores the
results, and the engine later trains on exactly those bytes.

Zips are untrusted archives. Nothing is written to disk, and an archive is refused
before anything is decompressed when its directory says it is unsafe: entries with
absolute or `..` paths or symlinks, too many entries, more uncompressed bytes than
allowed, or a compression ratio no photo has (a zip bomb). Reads are capped by the
declared sizes, which zipfile enforces, so a lying directory cannot inflate either.

Files that are not usable images (a stray .txt, a damaged JPEG, a too-small picture) are
skipped with a note that names them, rather than failing the whole upload; only too few
or too many usable images is an error, and it lists what was skipped.
"""

from __future__ import annotations

import hashlib
import io
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath

from PIL import Image

from engine.api.params import InvalidParams
from engine.imaging.attachments import load_image

DEFAULT_MAX_ZIP_ENTRIES = 200
DEFAULT_MAX_UNCOMPRESSED = 512 * 1024 * 1024
# Photos barely compress (JPEG, PNG, WebP are compressed already; even BMP rarely passes
# 10:1); a bomb's ratio is in the hundreds or thousands.
MAX_COMPRESSION_RATIO = 100
RATIO_CHECK_FROM = 1024 * 1024  # small files (a flat-colour BMP) may compress very well
# Upscaling a picture more than 2x only trains the model on blur.
MIN_SIDE_FRACTION = 0.5
# Junk that archivers add; skipped without a note.
_JUNK_PARTS = ("__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


@dataclass(frozen=True, slots=True)
class CollectedImages:
    """Square RGB PNGs at the training resolution, and a note for each file skipped."""

    images: list[bytes]
    skipped: list[str] = field(default_factory=list)


def collect_training_images(
    files: list[tuple[str, bytes]],
    *,
    resolution: int,
    max_images: int,
    min_images: int,
    max_pixels: int,
    max_zip_bytes: int,
    max_zip_entries: int = DEFAULT_MAX_ZIP_ENTRIES,
    max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
) -> CollectedImages:
    """Check and prepare the training images from attachments (name, bytes) or one zip.

    Raises InvalidParams, with a message for the member, for an unsafe zip, a mix of a zip
    and images, or fewer than `min_images` / more than `max_images` usable images.
    """
    if not files:
        raise InvalidParams(f"Attach {min_images}-{max_images} photos, or one .zip of them.")
    zips = [name for name, data in files if is_zip(data)]
    if zips and len(files) > 1:
        raise InvalidParams("Send the photos as attachments or as one .zip, not both.")
    if zips:
        entries: Iterator[tuple[str, bytes]] = iter_zip_images(
            files[0][1],
            max_zip_bytes=max_zip_bytes,
            max_entries=max_zip_entries,
            max_uncompressed=max_uncompressed,
        )
    else:
        entries = iter(files)
    return _prepare_all(entries, resolution, max_images, min_images, max_pixels)


def is_zip(data: bytes) -> bool:
    return data[:4] in _ZIP_MAGIC


def iter_zip_images(
    data: bytes, *, max_zip_bytes: int, max_entries: int, max_uncompressed: int
) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each file in the archive, after checking the whole directory."""
    if len(data) > max_zip_bytes:
        raise InvalidParams(
            f"The zip is {len(data) / 2**20:.1f} MiB; the limit is {max_zip_bytes / 2**20:.0f} MiB."
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError):
        raise InvalidParams("That zip file cannot be read.") from None
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        check_zip_directory(members, max_entries=max_entries, max_uncompressed=max_uncompressed)
        for info in members:
            if _is_junk(info.filename):
                continue
            yield info.filename, _read_member(archive, info)


def check_zip_directory(
    members: list[zipfile.ZipInfo], *, max_entries: int, max_uncompressed: int
) -> None:
    """Refuse the archive from its directory alone: nothing is decompressed yet."""
    if len(members) > max_entries:
        raise InvalidParams(f"The zip has {len(members)} files; the limit is {max_entries}.")
    total = 0
    for info in members:
        shown = display_name(info.filename)
        if not is_safe_member_name(info.filename):
            raise InvalidParams(
                f"The zip has an unsafe entry ({shown}): paths must stay inside the archive."
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidParams(f"The zip has a symbolic link ({shown}); zip the files only.")
        if info.flag_bits & 0x1:
            raise InvalidParams("The zip is encrypted; send one without a password.")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_CHECK_FROM and ratio > MAX_COMPRESSION_RATIO:
            raise InvalidParams(
                f"The zip entry {shown} expands {ratio:,.0f} times; that is not a photo."
            )
        total += info.file_size
    if total > max_uncompressed:
        raise InvalidParams(
            f"The zip expands to {total / 2**20:,.0f} MiB; the limit is "
            f"{max_uncompressed / 2**20:,.0f} MiB."
        )


def is_safe_member_name(name: str) -> bool:
    """No absolute path, drive, `..` or NUL, read both the POSIX and the Windows way."""
    if not name or "\x00" in name:
        return False
    for path in (PurePosixPath(name), PureWindowsPath(name)):
        if path.is_absolute() or path.anchor or ".." in path.parts:
            return False
    return True


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    # zipfile stops at the declared size and checks the CRC, so a lying directory entry
    # cannot make this read more than was checked above.
    try:
        with archive.open(info) as handle:
            return handle.read(info.file_size + 1)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError):
        return b""  # reported as unreadable with the entry's name


def _is_junk(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return any(part in _JUNK_PARTS or part.startswith("._") for part in parts)


def display_name(name: str) -> str:
    """A file name safe to show in Discord: no control characters or markdown, short."""
    cleaned = "".join(ch for ch in name if ch.isprintable() and ch not in "`*_~|<>@")
    cleaned = cleaned or "unnamed file"
    return cleaned if len(cleaned) <= 60 else cleaned[:57] + "..."


def _prepare_all(
    entries: Iterator[tuple[str, bytes]],
    resolution: int,
    max_images: int,
    min_images: int,
    max_pixels: int,
) -> CollectedImages:
    images: list[bytes] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for name, data in entries:
        shown = display_name(name)
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            skipped.append(f"{shown}: the same picture twice")
            continue
        seen.add(digest)
        try:
            png = prepare_image(data, resolution=resolution, max_pixels=max_pixels)
        except InvalidParams as error:
            skipped.append(f"{shown}: {error}")
            continue
        images.append(png)
        if len(images) > max_images:
            raise InvalidParams(
                f"That is more than {max_images} photos; send at most {max_images}."
            )
    if len(images) < min_images:
        detail = f" Skipped: {'; '.join(skipped)}" if skipped else ""
        raise InvalidParams(
            f"Training needs at least {min_images} usable photos; I found {len(images)}.{detail}"
        )
    return CollectedImages(images, skipped)


def prepare_image(data: bytes, *, resolution: int, max_pixels: int) -> bytes:
    """Decode (upright, as every attachment is), flatten, centre-crop to a square and resize."""
    image = load_image(data, max_pixels=max_pixels)
    side = min(image.size)
    if side < resolution * MIN_SIDE_FRACTION:
        raise InvalidParams(
            f"it is {image.width}x{image.height}; photos need at least "
            f"{int(resolution * MIN_SIDE_FRACTION)} pixels on the short side"
        )
    if image.mode == "RGBA":  # a cut-out subject: train on it over white, not black
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        image = background
    left = (image.width - side) // 2
    top = (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    resized = square.resize((resolution, resolution), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    resized.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()

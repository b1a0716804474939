"""An interpolation's frames as one animation under Discord's upload limit: animated WebP,
GIF (Pillow) or MP4 (H.264 through PyAV, whose wheels bundle FFmpeg: no system ffmpeg).
No torch here; the bot calls it off the event loop.

Each format walks down a ladder until the file fits: its quality first (WebP's quality, GIF's
palette size, H.264's CRF), then the frames' size, down to a quarter of their side. The submit
check (`fits_upload`) refuses what could not fit even at half the side, with a margin, so the
last rungs are only for a limit smaller than the one the member was promised (a post after a
restart goes out under the unboosted 10 MiB).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from fractions import Fraction

from PIL import Image

from engine.imaging.images import EXIF_IFD, EXIF_USER_COMMENT, EncodedImage, user_comment

SCALES = (1.0, 0.75, 0.5, 0.35, 0.25)
WEBP_QUALITIES = (80, 65, 50)
GIF_COLOURS = (256, 128)
MP4_CRFS = (23, 28, 33)
# Bytes per pixel of a frame at a format's lowest rung, for SD pictures with fine detail (an
# upper estimate: GIF's LZW gains little on dithered photos; lossy WebP and H.264 share much
# between neighbouring frames). The submit check allows half the side: a quarter the pixels.
WORST_BYTES_PER_PIXEL = {"webp": 0.15, "gif": 0.9, "mp4": 0.08}
SUBMIT_SCALE = 0.5
EXTENSIONS = {"webp": "webp", "gif": "gif", "mp4": "mp4"}


def fits_upload(frames: int, width: int, height: int, fmt: str, limit: int) -> bool:
    """Whether an animation of these frames can be made to fit `limit` bytes."""
    pixels = width * height * SUBMIT_SCALE**2
    return frames * pixels * WORST_BYTES_PER_PIXEL[fmt] <= limit


def mp4_available() -> bool:
    """PyAV is a dependency of the bot, but an install may lack its wheel (a platform
    without one): then MP4 is refused by name, and WebP and GIF still work."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def encode_animation(
    pngs: Sequence[bytes], fmt: str, fps: int, limit: int, infotext: str = ""
) -> EncodedImage:
    """The frames as a looping animation of `fmt` at `fps`, the first that fits `limit`
    (else the smallest made). WebP carries `infotext` in EXIF, as a re-encoded result does."""
    frames = [_rgb(png) for png in pngs]
    encode = _ENCODERS[fmt]
    smallest: bytes | None = None
    for scale in SCALES:
        scaled = _scaled(frames, scale, even=fmt == "mp4")
        for rung in range(len(_RUNGS[fmt])):
            data = encode(scaled, fps, rung, infotext)
            if len(data) <= limit:
                return EncodedImage(data, EXTENSIONS[fmt])
            if smallest is None or len(data) < len(smallest):
                smallest = data
    assert smallest is not None
    return EncodedImage(smallest, EXTENSIONS[fmt])


def frame_count(data: bytes) -> int:
    """How many frames a WebP or GIF animation holds (for tests and /png-info)."""
    with Image.open(io.BytesIO(data)) as image:
        return int(getattr(image, "n_frames", 1))


def _rgb(png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(png)) as opened:
        return opened.convert("RGB")


def _scaled(frames: list[Image.Image], scale: float, *, even: bool) -> list[Image.Image]:
    if scale == 1.0 and not even:
        return frames
    width, height = frames[0].size
    # H.264 in yuv420p needs even sides.
    step = 2 if even else 1
    size = (
        max(step, math.floor(width * scale / step) * step),
        max(step, math.floor(height * scale / step) * step),
    )
    if size == (width, height):
        return frames
    return [frame.resize(size, Image.Resampling.LANCZOS) for frame in frames]


def _duration(fps: int) -> int:
    return round(1000 / fps)


def _webp(frames: list[Image.Image], fps: int, rung: int, infotext: str) -> bytes:
    buffer = io.BytesIO()
    options: dict[str, object] = {}
    if infotext:
        exif = Image.Exif()
        exif.get_ifd(EXIF_IFD)[EXIF_USER_COMMENT] = user_comment(infotext)
        options["exif"] = exif.tobytes()
    frames[0].save(
        buffer,
        format="WEBP",
        save_all=True,
        append_images=frames[1:],
        duration=_duration(fps),
        loop=0,
        quality=WEBP_QUALITIES[rung],
        method=4,
        **options,
    )
    return buffer.getvalue()


def _gif(frames: list[Image.Image], fps: int, rung: int, infotext: str) -> bytes:
    colours = GIF_COLOURS[rung]
    paletted = [frame.quantize(colours, dither=Image.Dither.FLOYDSTEINBERG) for frame in frames]
    buffer = io.BytesIO()
    paletted[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=paletted[1:],
        duration=_duration(fps),
        loop=0,
        optimize=False,
    )
    return buffer.getvalue()


def _mp4(frames: list[Image.Image], fps: int, rung: int, infotext: str) -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"  # what Discord's and browsers' players decode
        stream.options = {"crf": str(MP4_CRFS[rung]), "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


_Encoder = Callable[[list[Image.Image], int, int, str], bytes]
_ENCODERS: dict[str, _Encoder] = {"webp": _webp, "gif": _gif, "mp4": _mp4}
_RUNGS: dict[str, tuple[int, ...]] = {"webp": WEBP_QUALITIES, "gif": GIF_COLOURS, "mp4": MP4_CRFS}

"""Typed job parameters and results, shared by the bot and the engine. No torch here."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self

from engine.api.samplers import AUTOMATIC, split_sampler

MIN_STEPS, MAX_STEPS = 1, 150
MIN_CFG, MAX_CFG = 0.0, 30.0
MIN_COUNT, MAX_COUNT = 1, 4
MAX_SEED = 2**32 - 1  # A1111 seeds are unsigned 32-bit
# A1111 counts CLIP layers from the end: 1 is the last, 2 the penultimate; CLIP ViT-L has 12.
MIN_CLIP_SKIP, MAX_CLIP_SKIP = 1, 12
MIN_VARIATION_STRENGTH, MAX_VARIATION_STRENGTH = 0.0, 1.0
MIN_SIDE = 64
# How a job makes its images. Every mode but txt2img and interpolate (frames from text,
# issue 18) starts from a stored input image. `edit` (issue 18's /edit) is InstructPix2Pix:
# the picture conditions the model, words say what to change.
MODES = ("txt2img", "img2img", "inpaint", "outpaint", "upscale", "edit", "interpolate")
IMAGE_MODES = frozenset(MODES) - {"txt2img", "interpolate"}
MIN_DENOISE, MAX_DENOISE = 0.0, 1.0
MAX_MASK_BLUR = 64
MAX_INPAINT_PADDING = 256
MAX_OUTPAINT = 1024  # pixels added on one side
MIN_UPSCALE, MAX_UPSCALE = 1.0, 4.0
# Canny maps are computed from any picture; the other types take a ready control map.
CONTROL_TYPES = ("canny", "depth", "openpose", "scribble", "lineart", "softedge", "seg", "normal")
MIN_CONTROL_SCALE, MAX_CONTROL_SCALE = 0.0, 2.0
# A1111's "Image CFG Scale" slider for instruct-pix2pix models: 0-3, 1.5 by default.
MIN_IMAGE_CFG, MAX_IMAGE_CFG, DEFAULT_IMAGE_CFG = 0.0, 3.0, 1.5
SIZE_MULTIPLE = 8  # the VAE downsamples by 8, so latents need whole pixels

SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[x×*]\s*(\d{1,5})\s*$", re.IGNORECASE)


class InvalidParams(ValueError):
    """A parameter a member can fix; the message is shown to them as is."""


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Everything that determines a txt2img result, and nothing else."""

    prompt: str
    negative: str
    seed: int
    steps: int
    cfg: float
    width: int
    height: int
    sampler: str
    count: int
    model: str
    clip_skip: int = 1
    prompt_syntax: str = "a1111"
    variation_seed: int | None = None
    variation_strength: float = 0.0
    # Image-conditioned modes (issue 5). Images are named by the key of their stored bytes
    # (see bot/jobs/inputs.py), never by an attachment URL, which expires.
    mode: str = "txt2img"
    denoise: float = 0.75  # A1111's "Denoising strength": 0 keeps the image, 1 ignores it
    init_image: str | None = None
    mask_image: str | None = None  # white repaints; None in inpaint: the init image's alpha
    mask_blur: int = 4
    inpaint_full_res: bool = False  # A1111's "Inpaint area: Only masked"
    inpaint_padding: int = 32  # A1111's "Only masked padding, pixels"
    # Pixels added to the left, right, top and bottom of the init image.
    outpaint: tuple[int, int, int, int] = (0, 0, 0, 0)
    upscale: float = 1.0  # /upscale and U buttons: width and height are the target size
    control_type: str | None = None
    control_image: str | None = None
    control_scale: float = 1.0
    # Trained adapters (issue 6), resolved by the service from the prompt's <lora:name:w>
    # tags and the tokens it uses, among files the member may use: (name, file, weight) and
    # (token, file). The prompt keeps its tags, as A1111's infotext does.
    loras: tuple[tuple[str, str, float], ...] = ()
    embeddings: tuple[tuple[str, str], ...] = ()
    # A1111 1.9+'s "Schedule type" (issue 16); "Automatic" is the sampler's own.
    schedule: str = AUTOMATIC
    # Vary (Region) (issue 18): an inpaint whose mask is made on the engine thread from
    # words and/or a 3x3 grid cell (engine/api/regions.py), never stored as a file, so a
    # reroll or a restart makes the same mask. A preview job paints nothing: its image is
    # the mask over the picture, for the member to Run or Cancel.
    mask_prompt: str | None = None
    mask_cell: str | None = None
    mask_preview: bool = False
    # Hires fix (issue 16), as A1111's: width x height is the first pass, upscaled by
    # `hires_scale` (1: off) or to `hires_resize` (A1111's "Resize width to / height to", a 0
    # side follows the first pass's aspect; (0, 0): the scale), then an img2img pass of
    # `hires_steps` (0: `steps`). Its prompts, sampler, schedule and CFG scale are the first
    # pass's where they are empty or None, as A1111's "Use same ..." (engine/api/hires.py).
    hires_scale: float = 1.0
    hires_upscaler: str = "Latent"
    hires_steps: int = 0
    hires_denoise: float = 0.7
    hires_resize: tuple[int, int] = (0, 0)
    hires_prompt: str = ""
    hires_negative: str = ""
    hires_sampler: str | None = None
    hires_schedule: str | None = None
    hires_cfg: float | None = None
    # /edit (issue 18): how strongly the result holds to the picture (A1111's Image CFG
    # scale); `cfg` is how strongly it follows the instruction. Read by the edit mode only.
    image_cfg: float = DEFAULT_IMAGE_CFG
    # /interpolate (issue 18): `frames` images from (prompt, seed) to (prompt_to, seed_to),
    # embeddings lerped and starting noise slerped (engine/api/interpolation.py); None: the
    # same prompt or seed at both ends. The animation's speed and file format ride along.
    prompt_to: str | None = None
    seed_to: int | None = None
    frames: int = 0
    fps: int = 8
    animation: str = "webp"
    # Image prompts (issue 18; engine/api/image_prompts.py): stored pictures whose CLIP image
    # embeddings guide the UNet through the model's IP-Adapter at `image_weight` (0: off),
    # `style_images` in the style layers only (InstantStyle), as Midjourney's --sref.
    image_prompts: tuple[str, ...] = ()
    style_images: tuple[str, ...] = ()
    image_weight: float = 0.6

    def __post_init__(self) -> None:
        # A combined name (`DPM++ 2M Karras`: A1111 before 1.9, this bot's stored jobs,
        # preferences and server defaults) becomes the pair A1111 writes today.
        sampler, schedule = split_sampler(self.sampler, self.schedule)
        object.__setattr__(self, "sampler", sampler)
        object.__setattr__(self, "schedule", schedule)

    @property
    def input_keys(self) -> list[str]:
        """The stored images this job reads."""
        keys = (self.init_image, self.mask_image, self.control_image)
        return [key for key in keys if key is not None] + [
            *self.image_prompts,
            *self.style_images,
        ]

    @property
    def has_image_prompts(self) -> bool:
        return bool(self.image_prompts or self.style_images)

    @property
    def has_region(self) -> bool:
        """An inpaint whose mask the engine makes from words or a grid cell."""
        return self.mask_prompt is not None or self.mask_cell is not None

    @property
    def has_variation(self) -> bool:
        """A1111 blends in the variation seed's noise only at a strength above 0."""
        return self.variation_seed is not None and self.variation_strength > 0

    @property
    def seeds(self) -> list[int]:
        """A batch uses seed, seed+1, ... as A1111 does. With a variation, A1111 keeps the
        seed for every image and counts the variation seed up instead (variation_seeds)."""
        step = 0 if self.has_variation else 1
        return [(self.seed + i * step) % (MAX_SEED + 1) for i in range(self.count)]

    @property
    def variation_seeds(self) -> list[int | None]:
        """Each image's variation seed: variation_seed, +1, ...; None without a variation."""
        if self.variation_seed is None or not self.has_variation:
            return [None] * self.count
        return [(self.variation_seed + i) % (MAX_SEED + 1) for i in range(self.count)]

    @property
    def images(self) -> int:
        """How many images the job makes: an interpolation's frames, else `count`. What the
        batch budget and the price count."""
        return self.frames if self.mode == "interpolate" else self.count

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def has_hires(self) -> bool:
        """Text to image only: a result's buttons (img2img, U) start from its final image."""
        resized = self.hires_resize != (0, 0)
        return (self.hires_scale != 1 or resized) and self.mode == "txt2img"

    def batch_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one UNet batch.

        Prompt syntax and clip skip are not in it: embeddings are made per job anyway. Nor
        are variation seeds: the engine draws every image's starting noise itself.
        Image-conditioned jobs share a batch only with jobs on the same inputs.
        """
        key: tuple[Any, ...] = (self.model, self.width, self.height, self.steps, self.sampler)
        key += (self.schedule,)
        # One UNet batch carries one set of adapters.
        key += (self.cfg, self.loras, self.embeddings)
        # Hires fix: the batch's first job decides the first pass's output and progress total
        # (each job's own prompts then run its own second pass).
        key += (self.hires_scale, self.hires_upscaler, self.hires_steps, self.hires_denoise)
        key += (self.hires_resize, self.hires_sampler, self.hires_schedule, self.hires_cfg)
        if self.has_image_prompts:  # one UNet batch carries one set of image embeddings
            key += (self.image_prompts, self.style_images, self.image_weight)
        if self.mode == "txt2img" and self.control_type is None:
            return key
        return (
            *key,
            self.mode,
            self.denoise,
            *self.input_keys,
            self.mask_blur,
            self.inpaint_full_res,
            self.inpaint_padding,
            self.outpaint,
            self.upscale,
            self.control_type,
            self.control_scale,
            self.mask_prompt,
            self.mask_cell,
            self.mask_preview,
            self.image_cfg,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in names}
        for name in ("outpaint", "hires_resize"):  # JSON has no tuples
            if name in values:
                values[name] = tuple(values[name])
        for name in ("loras", "embeddings"):
            if name in values:
                values[name] = tuple(tuple(item) for item in values[name])
        for name in ("image_prompts", "style_images"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    seed: int
    png: bytes
    width: int
    height: int
    infotext: str
    variation_seed: int | None = None
    # The safety checker's verdict, made on the engine thread with the batch (EngineConfig's
    # `safety_checker`); None when no checker ran.
    nsfw: bool | None = None


@dataclass(frozen=True, slots=True)
class GenerationResult:
    images: list[GeneratedImage]
    model_hash: str | None
    seconds: float


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    family: str
    device: str
    dtype: str
    load_seconds: float
    model_hash: str | None
    # The memory mode it runs in (engine/api/memory.py), as `auto` picked or the owner set.
    memory: str = "high"


@dataclass(frozen=True, slots=True)
class Progress:
    step: int
    total: int
    preview_png: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

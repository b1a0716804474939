"""Typed job parameters and results, shared by the bot and the engine. No torch here."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self

from engine.api.family_checks import family_problem
from engine.api.hires import hires_problem
from engine.api.prompt_syntax import PROMPT_SYNTAXES, weight_problem
from engine.api.regions import region_problem
from engine.api.samplers import AUTOMATIC, sampler_problem, split_sampler
from engine.api.specs import ModelSpec

MIN_STEPS, MAX_STEPS = 1, 150
MIN_CFG, MAX_CFG = 0.0, 30.0
MIN_COUNT, MAX_COUNT = 1, 4
MAX_SEED = 2**32 - 1  # A1111 seeds are unsigned 32-bit
# A1111 counts CLIP layers from the end: 1 is the last, 2 the penultimate; CLIP ViT-L has 12.
MIN_CLIP_SKIP, MAX_CLIP_SKIP = 1, 12
MIN_VARIATION_STRENGTH, MAX_VARIATION_STRENGTH = 0.0, 1.0
MIN_SIDE = 64
# How a job makes its images. Every mode but txt2img starts from a stored input image.
MODES = ("txt2img", "img2img", "inpaint", "outpaint", "upscale")
IMAGE_MODES = frozenset(MODES) - {"txt2img"}
MIN_DENOISE, MAX_DENOISE = 0.0, 1.0
MAX_MASK_BLUR = 64
MAX_INPAINT_PADDING = 256
MAX_OUTPAINT = 1024  # pixels added on one side
MIN_UPSCALE, MAX_UPSCALE = 1.0, 4.0
# Canny maps are computed from any picture; the other types take a ready control map.
CONTROL_TYPES = ("canny", "depth", "openpose", "scribble", "lineart", "softedge", "seg", "normal")
MIN_CONTROL_SCALE, MAX_CONTROL_SCALE = 0.0, 2.0
SIZE_MULTIPLE = 8  # the VAE downsamples by 8, so latents need whole pixels

_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[x×*]\s*(\d{1,5})\s*$", re.IGNORECASE)


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
    # `hires_scale` (1: off), then an img2img pass of `hires_steps` (0: `steps`).
    hires_scale: float = 1.0
    hires_upscaler: str = "Latent"
    hires_steps: int = 0
    hires_denoise: float = 0.7

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
        return [key for key in keys if key is not None]

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
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def has_hires(self) -> bool:
        """Text to image only: a result's buttons (img2img, U) start from its final image."""
        return self.hires_scale != 1 and self.mode == "txt2img"

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
        key += (self.hires_scale, self.hires_upscaler, self.hires_steps, self.hires_denoise)
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
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in names}
        if "outpaint" in values:  # JSON has no tuples
            values["outpaint"] = tuple(values["outpaint"])
        for name in ("loras", "embeddings"):
            if name in values:
                values[name] = tuple(tuple(item) for item in values[name])
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


def parse_size(text: str) -> tuple[int, int]:
    """`768x512` (also `768 x 512`, `768×512`) to (width, height); format errors only."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise InvalidParams(f"Size {text!r} is not WIDTHxHEIGHT, for example 512x768.")
    return int(match.group(1)), int(match.group(2))


def check_size(width: int, height: int, spec: ModelSpec) -> None:
    # SD 3 and FLUX cut the latents into 2x2 patches: 16 pixels, not the VAE's 8.
    multiple = max(SIZE_MULTIPLE, spec.family_row().size_multiple)
    if width % multiple or height % multiple:
        raise InvalidParams(
            f"Size {width}x{height}: width and height must be multiples of {multiple}"
            + (f" for {spec.family_row().label} models." if multiple != SIZE_MULTIPLE else ".")
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InvalidParams(f"Size {width}x{height}: each side must be at least {MIN_SIDE}.")
    cap = spec.pixel_cap()
    if width * height > cap:
        raise InvalidParams(
            f"Size {width}x{height} is {width * height:,} pixels; model {spec.name} allows "
            f"at most {cap:,}."
        )


# The largest result /upscale makes; past the model's own cap it is worked on in tiles.
DEFAULT_UPSCALE_PIXELS = 2048 * 2048


def check_params(
    params: GenerationParams,
    models: dict[str, ModelSpec],
    max_prompt: int,
    max_upscale_pixels: int = DEFAULT_UPSCALE_PIXELS,
) -> None:
    """Raise InvalidParams naming the first bad value; checks what Discord cannot."""
    # An upscale may go without one: the picture itself guides its detail pass.
    if not params.prompt.strip() and params.mode != "upscale":
        raise InvalidParams("The prompt is empty.")
    if len(params.prompt) > max_prompt:
        raise InvalidParams(
            f"The prompt is {len(params.prompt)} characters; the limit is {max_prompt}."
        )
    if len(params.negative) > max_prompt:
        raise InvalidParams(
            f"The negative prompt is {len(params.negative)} characters; the limit is {max_prompt}."
        )
    spec = models.get(params.model)
    if spec is None:
        raise InvalidParams(f"Unknown model {params.model!r}. Models: {', '.join(sorted(models))}.")
    problem = sampler_problem(params.sampler, params.schedule)
    if problem is not None:
        raise InvalidParams(problem)
    if not MIN_STEPS <= params.steps <= MAX_STEPS:
        raise InvalidParams(f"Steps must be {MIN_STEPS}-{MAX_STEPS}, not {params.steps}.")
    if not MIN_CFG <= params.cfg <= MAX_CFG:
        raise InvalidParams(f"CFG scale must be {MIN_CFG:g}-{MAX_CFG:g}, not {params.cfg:g}.")
    if not MIN_COUNT <= params.count <= MAX_COUNT:
        raise InvalidParams(f"Count must be {MIN_COUNT}-{MAX_COUNT}, not {params.count}.")
    if not 0 <= params.seed <= MAX_SEED:
        raise InvalidParams(f"Seed must be 0-{MAX_SEED} (or -1 for random), not {params.seed}.")
    if params.mode == "upscale":
        check_upscale_size(params.width, params.height, max_upscale_pixels)
    else:
        check_size(params.width, params.height, spec)
    check_prompt_options(params)
    check_image_options(params)
    problem = hires_problem(params, spec) or family_problem(params, spec.family_row())
    if problem is not None:
        raise InvalidParams(problem)


def check_upscale_size(width: int, height: int, max_pixels: int) -> None:
    if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
        raise InvalidParams(
            f"Size {width}x{height}: width and height must be multiples of {SIZE_MULTIPLE}."
        )
    if width * height > max_pixels:
        raise InvalidParams(
            f"An upscale to {width}x{height} is {width * height:,} pixels; the limit is "
            f"{max_pixels:,}. Choose a smaller factor."
        )


def check_image_options(params: GenerationParams) -> None:
    """The image-conditioned modes' options (issue 5)."""
    if params.mode not in MODES:
        raise InvalidParams(f"Unknown mode {params.mode!r}. Modes: {', '.join(MODES)}.")
    if params.mode in IMAGE_MODES and params.init_image is None:
        raise InvalidParams(f"{params.mode} needs an image to start from.")
    if not MIN_DENOISE <= params.denoise <= MAX_DENOISE:
        raise InvalidParams(
            f"Denoising strength must be {MIN_DENOISE:g}-{MAX_DENOISE:g}, not {params.denoise:g}."
        )
    if not 0 <= params.mask_blur <= MAX_MASK_BLUR:
        raise InvalidParams(f"Mask blur must be 0-{MAX_MASK_BLUR}, not {params.mask_blur}.")
    if not 0 <= params.inpaint_padding <= MAX_INPAINT_PADDING:
        raise InvalidParams(
            f"Inpaint padding must be 0-{MAX_INPAINT_PADDING}, not {params.inpaint_padding}."
        )
    if len(params.outpaint) != 4 or any(not 0 <= side <= MAX_OUTPAINT for side in params.outpaint):
        raise InvalidParams(f"Each side of an outpaint must be 0-{MAX_OUTPAINT} pixels.")
    if params.mode == "outpaint" and not any(params.outpaint):
        raise InvalidParams("Outpainting needs at least one side to grow (left, right, up, down).")
    if not MIN_UPSCALE <= params.upscale <= MAX_UPSCALE:
        raise InvalidParams(
            f"Upscale factor must be {MIN_UPSCALE:g}-{MAX_UPSCALE:g}, not {params.upscale:g}."
        )
    if params.control_type is not None:
        if params.control_type not in CONTROL_TYPES:
            raise InvalidParams(
                f"Unknown control type {params.control_type!r}. Types: {', '.join(CONTROL_TYPES)}."
            )
        if params.control_image is None:
            raise InvalidParams("A control type needs a control image.")
    if not MIN_CONTROL_SCALE <= params.control_scale <= MAX_CONTROL_SCALE:
        raise InvalidParams(
            f"Control weight must be {MIN_CONTROL_SCALE:g}-{MAX_CONTROL_SCALE:g}, "
            f"not {params.control_scale:g}."
        )
    check_region_options(params)


def check_region_options(params: GenerationParams) -> None:
    """Vary (Region)'s words and cell. Outside inpainting they are only a record (read back
    from infotext, which never brings the picture): they are checked, and do nothing."""
    problem = region_problem(params.mask_prompt, params.mask_cell)
    if problem is not None:
        raise InvalidParams(problem)
    if params.mode != "inpaint" or not params.has_region:
        if params.mask_preview:
            raise InvalidParams("A mask preview needs a region to show.")
        return
    if params.mask_image is not None:
        raise InvalidParams("A region in words and a mask image cannot be used together.")


def check_prompt_options(params: GenerationParams) -> None:
    """Clip skip, prompt syntax and the variation seed (issue 7's options)."""
    if not MIN_CLIP_SKIP <= params.clip_skip <= MAX_CLIP_SKIP:
        raise InvalidParams(
            f"Clip skip must be {MIN_CLIP_SKIP}-{MAX_CLIP_SKIP}, not {params.clip_skip}."
        )
    if params.prompt_syntax not in PROMPT_SYNTAXES:
        raise InvalidParams(
            f"Unknown prompt syntax {params.prompt_syntax!r}. "
            f"Syntaxes: {', '.join(PROMPT_SYNTAXES)}."
        )
    strength = params.variation_strength
    if not MIN_VARIATION_STRENGTH <= strength <= MAX_VARIATION_STRENGTH:
        raise InvalidParams(
            f"Variation strength must be {MIN_VARIATION_STRENGTH:g}-{MAX_VARIATION_STRENGTH:g}, "
            f"not {strength:g}."
        )
    variation = params.variation_seed
    if variation is not None and not 0 <= variation <= MAX_SEED:
        raise InvalidParams(
            f"Variation seed must be 0-{MAX_SEED} (or -1 for random), not {variation}."
        )
    if strength > 0 and variation is None:
        raise InvalidParams("A variation strength above 0 needs a variation seed.")
    for text, what in ((params.prompt, "prompt"), (params.negative, "negative prompt")):
        problem = weight_problem(text, params.prompt_syntax, what)
        if problem is not None:
            raise InvalidParams(problem)

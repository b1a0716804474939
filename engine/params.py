"""Typed job parameters and results, shared by the bot and the engine. No torch here."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self

from engine.samplers import SAMPLERS
from engine.specs import ModelSpec

MIN_STEPS, MAX_STEPS = 1, 150
MIN_CFG, MAX_CFG = 0.0, 30.0
MIN_COUNT, MAX_COUNT = 1, 4
MAX_SEED = 2**32 - 1  # A1111 seeds are unsigned 32-bit
# A1111 counts CLIP layers from the end: 1 is the last, 2 the penultimate; CLIP ViT-L has 12.
MIN_CLIP_SKIP, MAX_CLIP_SKIP = 1, 12
MIN_VARIATION_STRENGTH, MAX_VARIATION_STRENGTH = 0.0, 1.0
# How prompt text is read: A1111's emphasis syntax, the optimized fork's `text:weight`
# sub-prompts, or whichever one the text unambiguously uses (engine/prompts.py).
PROMPT_SYNTAXES = ("a1111", "subprompt", "auto")
MIN_SIDE = 64
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

    def batch_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one UNet batch.

        Prompt syntax and clip skip are not in it: embeddings are made per job anyway. Nor
        are variation seeds: the engine draws every image's starting noise itself.
        """
        return (self.model, self.width, self.height, self.steps, self.sampler, self.cfg)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    seed: int
    png: bytes
    width: int
    height: int
    infotext: str
    variation_seed: int | None = None


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
    if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
        raise InvalidParams(
            f"Size {width}x{height}: width and height must be multiples of {SIZE_MULTIPLE}."
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InvalidParams(f"Size {width}x{height}: each side must be at least {MIN_SIDE}.")
    cap = spec.pixel_cap()
    if width * height > cap:
        raise InvalidParams(
            f"Size {width}x{height} is {width * height:,} pixels; model {spec.name} allows "
            f"at most {cap:,}."
        )


def check_params(params: GenerationParams, models: dict[str, ModelSpec], max_prompt: int) -> None:
    """Raise InvalidParams naming the first bad value; checks what Discord cannot."""
    if not params.prompt.strip():
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
    if params.sampler not in SAMPLERS:
        raise InvalidParams(f"Unknown sampler {params.sampler!r}. Samplers: {', '.join(SAMPLERS)}.")
    if not MIN_STEPS <= params.steps <= MAX_STEPS:
        raise InvalidParams(f"Steps must be {MIN_STEPS}-{MAX_STEPS}, not {params.steps}.")
    if not MIN_CFG <= params.cfg <= MAX_CFG:
        raise InvalidParams(f"CFG scale must be {MIN_CFG:g}-{MAX_CFG:g}, not {params.cfg:g}.")
    if not MIN_COUNT <= params.count <= MAX_COUNT:
        raise InvalidParams(f"Count must be {MIN_COUNT}-{MAX_COUNT}, not {params.count}.")
    if not 0 <= params.seed <= MAX_SEED:
        raise InvalidParams(f"Seed must be 0-{MAX_SEED} (or -1 for random), not {params.seed}.")
    check_size(params.width, params.height, spec)
    check_prompt_options(params)


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

"""What a /train job is, as plain data: parameters, limits, defaults, names and prices.

No torch here: the bot imports this module to check a member's request and price it
before anything reaches the engine.

Defaults (per method) start from the published ones and are sized for 5-20 photos:

- LoRA (DreamBooth-style): diffusers' `train_dreambooth_lora.py` trains rank 4 at a
  learning rate of 1e-4 for 500 steps on its 5-photo dog example; kohya's scripts are
  commonly run at rank 8-32 with the same 1e-4. We take 1e-4, rank 8 (a little more
  capacity than diffusers' 4 for faces; about 6 MB for SD 1.5) and 600 steps: ~100 steps
  per photo for a typical 6-photo set, and still short of overfitting for 20 photos at
  this learning rate.
- Textual inversion: diffusers' `textual_inversion.py` example uses 5e-4 scaled by its
  batch of 4 with 4 accumulation steps (an effective ~5e-3, also A1111's default embedding
  learning rate) for 3000 steps. One vector at batch 1 converges much earlier for a single
  subject; 1500 steps at 5e-3 is the default.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Self

from engine.api import families
from engine.api.params import MAX_SEED, InvalidParams

METHODS = ("lora", "embedding")

NAME_MAX = 32
TOKEN_MIN, TOKEN_MAX = 3, 24
CLASS_WORD_MAX = 32
MIN_RESOLUTION, MAX_RESOLUTION = 256, 1024
RESOLUTION_MULTIPLE = 64  # the UNet halves latents three times: sides must divide by 8 * 8
MAX_PRIOR_LOSS_WEIGHT = 10.0
MIN_CLASS_IMAGE_STEPS, MAX_CLASS_IMAGE_STEPS = 1, 50

# A rare prefix, as DreamBooth's "sks" or the community's "ohwx"/"zwx": CLIP has no word
# that starts with it, so the default token carries no meaning of its own at first.
RARE_PREFIX = "zwx"

# Windows cannot create files with these names, whatever the extension; owners run there.
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
)
_TOKEN_RE = re.compile(rf"^[a-z][a-z0-9]{{{TOKEN_MIN - 1},{TOKEN_MAX - 1}}}$")
_CLASS_WORD_RE = re.compile(r"^[a-z][a-z -]*$")


@dataclass(frozen=True, slots=True)
class MethodDefaults:
    steps: int
    rank: int
    learning_rate: float


METHOD_DEFAULTS: dict[str, MethodDefaults] = {
    "lora": MethodDefaults(steps=600, rank=8, learning_rate=1e-4),
    # rank is meaningless for an embedding; 1 keeps the field honest (one vector)
    "embedding": MethodDefaults(steps=1500, rank=1, learning_rate=5e-3),
}


@dataclass(frozen=True, slots=True)
class TrainingLimits:
    """What an owner allows members to ask for."""

    max_steps: int = 2000
    max_rank: int = 64
    min_learning_rate: float = 1e-6
    max_learning_rate: float = 1e-2
    min_images: int = 3
    max_images: int = 20
    max_class_images: int = 200
    # The resolution follows the model's configured size, not the member; an owner's small
    # configured size (a test model) may go below the usual floor.
    min_resolution: int = MIN_RESOLUTION


@dataclass(frozen=True, slots=True)
class TrainingParams:
    """Everything that determines a training result, and nothing else.

    `image_keys` name the stored, already prepared training images (see
    engine/imaging/training_images.py), in order; the engine gets their bytes with the job.
    """

    name: str
    token: str
    class_word: str
    method: str
    model: str
    steps: int
    rank: int
    learning_rate: float
    resolution: int
    seed: int
    prior_preservation: bool = False
    prior_loss_weight: float = 1.0
    class_images: int = 100  # diffusers' num_class_images default
    class_image_steps: int = 25
    checkpoint_every: int = 100
    image_keys: tuple[str, ...] = ()

    @property
    def instance_prompt(self) -> str:
        """DreamBooth's prompt: the rare token, then the class it belongs to."""
        return f"a photo of {self.token} {self.class_word}".strip()

    @property
    def class_prompt(self) -> str:
        return f"a photo of {self.class_word}"

    @property
    def file_name(self) -> str:
        """The output's file name; `name` is sanitised, so no path can come from it."""
        return f"{sanitize_name(self.name)}.safetensors"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_keys"] = list(self.image_keys)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in names}
        if "image_keys" in values:  # JSON has no tuples
            values["image_keys"] = tuple(values["image_keys"])
        return cls(**values)


# A training job's checkpoint, in its folder (engine/training/checkpoint.py writes it).
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True, slots=True)
class TrainingProgress:
    """Reported after every step (the caller throttles). `phase` is "class images" while
    prior-preservation images are generated, then "training"."""

    step: int
    total: int
    loss: float | None
    seconds_left: float | None
    phase: str = "training"
    # This step's checkpoint was just written (CHECKPOINT_FILE in the job's folder): a GPU
    # worker sends it back to the bot, so another worker can resume from it.
    checkpointed: bool = False

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0


@dataclass(frozen=True, slots=True)
class TrainingResult:
    path: Path
    metadata: dict[str, str]
    seconds: float
    final_loss: float
    resumed_from: int = 0  # the checkpoint's step, 0 for a fresh run


def sanitize_name(text: str) -> str:
    """A member's name for a LoRA or embedding, made safe as a file name and a prompt word.

    Lowercase ASCII letters, digits, `-` and `_` only (accents are dropped, spaces become
    `-`); no dots or separators, so no path can be built from it. Refuses rather than
    returning an empty or reserved name.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    lowered = re.sub(r"\s+", "-", ascii_text.strip().lower())
    cleaned = re.sub(r"[^a-z0-9_-]", "", lowered)
    cleaned = re.sub(r"([-_])[-_]+", r"\1", cleaned).strip("-_")[:NAME_MAX].strip("-_")
    if not cleaned:
        raise InvalidParams(
            f"The name {text[:40]!r} has no letters or digits; use letters, digits, - or _."
        )
    if cleaned in _WINDOWS_RESERVED:
        raise InvalidParams(f"{cleaned!r} cannot be used as a name; choose another.")
    return cleaned


def default_token(name: str) -> str:
    """A rare trigger word derived from the name: `zwx` + its letters and digits."""
    core = re.sub(r"[^a-z0-9]", "", sanitize_name(name))
    return (RARE_PREFIX + core)[:TOKEN_MAX]


def make_training_params(
    *,
    name: str,
    model: str,
    resolution: int,
    seed: int,
    method: str = "lora",
    class_word: str = "",
    token: str | None = None,
    steps: int | None = None,
    rank: int | None = None,
    learning_rate: float | None = None,
    **options: Any,
) -> TrainingParams:
    """A member's request with the method's defaults filled in (not yet checked)."""
    if method not in METHOD_DEFAULTS:
        raise InvalidParams(f"Unknown method {method!r}. Methods: {', '.join(METHODS)}.")
    defaults = METHOD_DEFAULTS[method]
    safe_name = sanitize_name(name)
    return TrainingParams(
        name=safe_name,
        token=(token or default_token(safe_name)).strip().lower(),
        class_word=" ".join(class_word.lower().split()),
        method=method,
        model=model,
        steps=steps if steps is not None else defaults.steps,
        rank=rank if rank is not None else defaults.rank,
        learning_rate=learning_rate if learning_rate is not None else defaults.learning_rate,
        resolution=resolution,
        seed=seed,
        **options,
    )


def training_problem(params: TrainingParams, family: str) -> str | None:
    """What a model of `family` cannot train of `params`, in one sentence; None if it can."""
    row = families.family(family)
    if not row.training:
        return f"{row.label} models cannot be trained here."
    if params.method == "embedding" and family == "sdxl":
        return "Embeddings can be trained for SD 1.x and 2.x models; use a LoRA."
    if params.method == "embedding" and not row.embeddings:
        return (
            f"Textual inversion is not available for {row.label} models (their T5 encoder "
            "reads no embeddings here); train a LoRA instead."
        )
    if params.prior_preservation and row.flow:
        return (
            f"Prior preservation is not available for {row.label} models here; train "
            "without class images."
        )
    return None


def check_training(
    params: TrainingParams, limits: TrainingLimits, family: str | None = None
) -> None:
    """Raise InvalidParams naming the first bad value, in words a member can act on.

    `family` (sd1, sd2, sdxl), when known, refuses what the engine cannot train.
    """
    if sanitize_name(params.name) != params.name:
        raise InvalidParams(f"The name {params.name!r} must be lowercase letters, digits, - or _.")
    if params.method not in METHODS:
        raise InvalidParams(f"Unknown method {params.method!r}. Methods: {', '.join(METHODS)}.")
    problem = training_problem(params, family) if family is not None else None
    if problem is not None:
        raise InvalidParams(problem)
    _check_words(params)
    _check_numbers(params, limits)
    _check_prior(params, limits)
    count = len(params.image_keys)
    if params.image_keys and not limits.min_images <= count <= limits.max_images:
        raise InvalidParams(
            f"Training needs {limits.min_images}-{limits.max_images} images, not {count}."
        )


def _check_words(params: TrainingParams) -> None:
    if not _TOKEN_RE.match(params.token):
        raise InvalidParams(
            f"The token {params.token!r} must be {TOKEN_MIN}-{TOKEN_MAX} lowercase letters or "
            "digits, starting with a letter (a rare word such as zwxrex)."
        )
    if params.class_word and (
        len(params.class_word) > CLASS_WORD_MAX or not _CLASS_WORD_RE.match(params.class_word)
    ):
        raise InvalidParams(
            f"The class word {params.class_word[:40]!r} must be a plain word such as person, "
            f"dog or style (letters, at most {CLASS_WORD_MAX})."
        )
    if params.class_word and params.token in params.class_word.split():
        raise InvalidParams("The token must differ from the class word.")


def _check_numbers(params: TrainingParams, limits: TrainingLimits) -> None:
    if not 1 <= params.steps <= limits.max_steps:
        raise InvalidParams(f"Steps must be 1-{limits.max_steps}, not {params.steps}.")
    if params.method == "lora" and not 1 <= params.rank <= limits.max_rank:
        raise InvalidParams(f"Rank must be 1-{limits.max_rank}, not {params.rank}.")
    low, high = limits.min_learning_rate, limits.max_learning_rate
    if not low <= params.learning_rate <= high:
        raise InvalidParams(
            f"Learning rate must be {low:g}-{high:g}, not {params.learning_rate:g}."
        )
    resolution = params.resolution
    lowest = limits.min_resolution
    if not lowest <= resolution <= MAX_RESOLUTION or resolution % RESOLUTION_MULTIPLE:
        raise InvalidParams(
            f"Resolution must be a multiple of {RESOLUTION_MULTIPLE} from {lowest} to "
            f"{MAX_RESOLUTION}, not {resolution}."
        )
    if not 0 <= params.seed <= MAX_SEED:
        raise InvalidParams(f"Seed must be 0-{MAX_SEED}, not {params.seed}.")
    if params.checkpoint_every < 1:
        raise InvalidParams("Checkpoints must be at least one step apart.")


def _check_prior(params: TrainingParams, limits: TrainingLimits) -> None:
    if not params.prior_preservation:
        return
    if not params.class_word:
        raise InvalidParams("Prior preservation needs a class word (person, dog, style...).")
    if not 1 <= params.class_images <= limits.max_class_images:
        raise InvalidParams(
            f"Class images must be 1-{limits.max_class_images}, not {params.class_images}."
        )
    if not 0 < params.prior_loss_weight <= MAX_PRIOR_LOSS_WEIGHT:
        raise InvalidParams(
            f"Prior loss weight must be above 0 and at most {MAX_PRIOR_LOSS_WEIGHT:g}."
        )
    if not MIN_CLASS_IMAGE_STEPS <= params.class_image_steps <= MAX_CLASS_IMAGE_STEPS:
        raise InvalidParams(
            f"Class image steps must be {MIN_CLASS_IMAGE_STEPS}-{MAX_CLASS_IMAGE_STEPS}."
        )


# -- Price -----------------------------------------------------------------------------------

# A standard image (bot.generation.options: 512x512, 20 steps) is 40 UNet forwards plus a VAE
# decode worth about 3 more (DESIGN.md's cost model). A training step is one forward and a
# backward pass that costs about twice a forward: 3 forwards per example at 512x512.
STANDARD_IMAGE_FORWARDS = 43.0
FORWARDS_PER_TRAINING_EXAMPLE = 3.0
STANDARD_PIXELS = 512 * 512
UNITS_PER_STEP = FORWARDS_PER_TRAINING_EXAMPLE / STANDARD_IMAGE_FORWARDS  # ~0.07


def training_price_units(params: TrainingParams, class_images_missing: int = 0) -> float:
    """What a training job is worth in standard images, priced per step.

    Prior preservation doubles each step's batch (one class image per instance image) and
    first generates the class images that are not cached yet (`class_images_missing`).
    """
    pixels = params.resolution**2 / STANDARD_PIXELS
    examples = 2 if params.prior_preservation else 1
    units = params.steps * UNITS_PER_STEP * examples * pixels
    if params.prior_preservation and class_images_missing > 0:
        units += class_images_missing * pixels * params.class_image_steps / 20
    return units


def sample_prompts(params: TrainingParams) -> list[str]:
    """Prompts for the few sample images posted when training ends, each with the token.

    A LoRA is only active with its tag: generate with `<lora:NAME:1>` appended (or the
    /dream lora option); an embedding is used by writing its token.
    """
    subject = f"{params.token} {params.class_word}".strip()
    if params.class_word == "style":
        return [f"a painting of a lighthouse, {subject}", f"a city street at night, {subject}"]
    return [f"a photo of {subject}", f"a portrait of {subject}, detailed", f"{subject} in a garden"]


def with_images(params: TrainingParams, image_keys: list[str]) -> TrainingParams:
    """The params naming the stored, prepared training images."""
    return replace(params, image_keys=tuple(image_keys))

"""Typed settings, read from the environment and `.env` (see `.env.example`).

A mistake in them is an owner's first hour: `explain_settings_error` turns what pydantic
raises into one line per setting, named as the owner typed it, with the fix.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from bot.fleet.protocol import queue_url_problem
from data.credits import CreditPolicy
from engine.api.image_prompts import adapter_problem
from engine.api.memory import MemorySetting
from engine.api.params import MAX_CFG, MAX_STEPS, MIN_CFG, MIN_STEPS
from engine.api.specs import ModelFamily, ModelSpec, Quantization

ENV_PREFIX = "SDBOT_"

# auto, cpu, mps, cuda or cuda:N (a card of several).
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"
DType = Literal["auto", "float16", "bfloat16", "float32"]
MAX_BATCH_JOBS = 16
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ModelSettings(BaseModel):
    """One named model as the owner configures it."""

    source: str = Field(description="Hub id, local diffusers folder, or .safetensors/.ckpt file")
    family: ModelFamily | Literal["auto"] = "auto"
    config: str | None = Field(
        default=None,
        description="For single files: a local diffusers folder or Hub id holding the config",
    )
    default_size: tuple[int, int] | None = None
    max_pixels: int | None = Field(default=None, gt=0)
    note: str = ""
    inpaint_source: str | None = Field(
        default=None, description="A dedicated inpainting checkpoint for /inpaint and /outpaint"
    )
    edit_source: str | None = Field(
        default=None, description="An InstructPix2Pix model (its 8-channel UNet) for /edit"
    )
    controlnets: dict[str, str] = Field(
        default_factory=dict, description="ControlNet sources by control type, e.g. canny"
    )
    vae: str | None = Field(
        default=None, description="A VAE to decode with, e.g. an fp16-safe one for SDXL"
    )
    memory: MemorySetting | None = Field(
        default=None, description="This model's memory mode; empty follows SDBOT_MEMORY"
    )
    transformer: str | None = Field(
        default=None,
        description="SD 3 / FLUX: a .safetensors or .gguf file replacing the transformer",
    )
    quantize: Quantization | None = Field(
        default=None, description="SD 3 / FLUX: nf4 quantizes the transformer (CUDA only)"
    )
    # What a job gets when the member says nothing (an 8-step merge, a turbo model);
    # empty: the family's own (engine/api/families.py).
    default_steps: int | None = Field(default=None, ge=MIN_STEPS, le=MAX_STEPS)
    default_cfg: float | None = Field(default=None, ge=MIN_CFG, le=MAX_CFG)
    ip_adapter: str | None = Field(
        default=None,
        description="Image prompts and /blend: this model's IP-Adapter weights (file, folder "
        "or Hub file owner/repo/path/file.safetensors)",
    )
    ip_adapter_encoder: str | None = Field(
        default=None,
        description="The IP-Adapter's image encoder folder in the same repo or folder "
        "(default: image_encoder beside the weights)",
    )

    @model_validator(mode="after")
    def _usable_ip_adapter(self) -> ModelSettings:
        problem = adapter_problem(self.ip_adapter, self.ip_adapter_encoder)
        if problem is not None:
            raise ValueError(problem)
        return self

    def to_spec(self, name: str) -> ModelSpec:
        return ModelSpec(
            name=name,
            source=self.source,
            family=None if self.family == "auto" else self.family,
            config=self.config,
            default_size=self.default_size,
            max_pixels=self.max_pixels,
            note=self.note,
            inpaint_source=self.inpaint_source,
            edit_source=self.edit_source,
            controlnets=dict(self.controlnets),
            vae=self.vae,
            memory=self.memory,
            transformer=self.transformer,
            quantize=self.quantize,
            default_steps=self.default_steps,
            default_cfg=self.default_cfg,
            ip_adapter=self.ip_adapter,
            ip_adapter_encoder=self.ip_adapter_encoder,
        )


def _default_models() -> dict[str, ModelSettings]:
    return {"sd15": ModelSettings(source="stable-diffusion-v1-5/stable-diffusion-v1-5")}


# Where settings come from, for Settings and for the log level read on its own.
SOURCES = SettingsConfigDict(
    env_prefix=ENV_PREFIX,
    env_file=".env",
    env_file_encoding="utf-8",
    extra="ignore",
    # `KEY=` left empty in .env means "use the default", as .env.example is written.
    env_ignore_empty=True,
)


class Settings(BaseSettings):
    """Every setting of the bot. `.env.example` documents each one; a test keeps them in step."""

    model_config = SOURCES

    discord_token: SecretStr | None = None
    dev_guild_id: int | None = None
    owner_ids: list[int] = Field(default_factory=list)
    admin_guild_ids: list[int] = Field(default_factory=list)
    data_dir: Path = Path("var")
    database_path: Path | None = None
    models: dict[str, ModelSettings] = Field(default_factory=_default_models)
    # Validated even when left out: an owner who names their only model anything but sd15
    # must hear it at start, not at the first /dream.
    default_model: str = Field(default="sd15", validate_default=True)
    device: str = Field(default="auto", pattern=DEVICE_PATTERN)
    dtype: DType = "auto"
    noise: Literal["cpu", "gpu"] = "cpu"
    # How much of a model stays on the GPU (engine/api/memory.py); auto picks from the card.
    memory: MemorySetting = "auto"
    # torch.compile of the UNet's repeated blocks, warmed up at start (CUDA only).
    compile: bool = False
    progress_interval: float = Field(default=2.0, ge=0.0)
    # Jobs of different members run as one batch: auto, as many images as the GPU holds
    # (bot/generation/batching.py); a number, at most that many jobs.
    max_batch: int | Literal["auto"] = "auto"
    max_prompt_length: int = Field(default=1500, ge=1, le=6000)
    prompt_syntax: Literal["a1111", "subprompt", "auto"] = "auto"
    price_per_image: float = Field(default=1.0, ge=0.0)
    starting_credits: int = Field(default=50, ge=0)
    topup_amount: int = Field(default=20, ge=0)
    topup_ceiling: int = Field(default=50, ge=0)
    topup_hours: float = Field(default=24.0, gt=0)
    max_pending_per_member: int = Field(default=3, ge=1)
    max_queued_total: int = Field(default=100, ge=1)
    # Result buttons (issue 4).
    variation_strength: float = Field(default=0.2, gt=0.0, le=1.0)
    strong_variation_denoise: float = Field(default=0.65, gt=0.0, le=1.0)
    buttons_for_anyone: bool = False
    # Upscaling (U buttons and /upscale): resize, then img2img at low denoise in tiles.
    upscale_factor: float = Field(default=2.0, ge=1.0, le=4.0)
    upscale_denoise: float = Field(default=0.3, ge=0.0, le=1.0)
    upscale_tile: int = Field(default=0, ge=0)
    upscale_tile_overlap: int = Field(default=64, ge=0)
    max_upscale_pixels: int = Field(default=2048 * 2048, gt=0)
    upscaler: str | None = None
    # Vary (Region) from words: a text-prompted segmentation model (CLIPSeg), Hub id or folder.
    segmenter: str | None = None
    # /describe: a BLIP captioner and a CLIP ranker of tag lists (Hub ids or folders); both.
    captioner: str | None = None
    clip_ranker: str | None = None
    # A folder of LoRA files (kohya / A1111 .safetensors) every member may use by <lora:name:w>.
    lora_dir: Path | None = None
    # Attachments are untrusted: refused over these before they are downloaded or decoded.
    max_attachment_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_attachment_pixels: int = Field(default=6144 * 6144, gt=0)
    # /train (issue 6): what a member may ask for, and how often a run is checkpointed.
    train_max_steps: int = Field(default=2000, ge=1)
    train_max_rank: int = Field(default=64, ge=1)
    train_max_images: int = Field(default=20, ge=3)
    train_checkpoint_every: int = Field(default=100, ge=1)
    # Content safety (issue 8): a Stable Diffusion safety checker (Hub id or folder; None:
    # nothing is checked), what a server does with flagged images by default outside
    # age-restricted channels, and whether the bot works only in age-restricted channels.
    safety_checker: str | None = None
    safety_action: Literal["blur", "spoiler", "refuse"] = "blur"
    age_restricted_only: bool = False
    # Retention (issue 14): finished jobs' images and the inputs only they used are removed
    # after RETENTION_DAYS, and the oldest first while they take more than RETENTION_MAX_GB.
    # 0 turns each off. Finite only: `inf` would read as "keep" and `nan` compares false.
    retention_days: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    retention_max_gb: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    log_level: str = "INFO"
    # GPU workers on other machines (bot/fleet): a Redis URL; empty, the bot's own thread.
    queue_url: SecretStr | None = None
    # How long a worker's batch may go without its claim renewed before another worker takes
    # it (the same on every worker): longer rides out a network blip, shorter recovers sooner.
    worker_lease_seconds: float = Field(default=30.0, ge=1.0, le=3600.0, allow_inf_nan=False)

    @field_validator("queue_url")
    @classmethod
    def _usable_queue_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is None or not url.get_secret_value():
            return None
        problem = queue_url_problem(url.get_secret_value())
        if problem is not None:
            raise ValueError(problem)
        return url

    @field_validator("max_batch", mode="before")
    @classmethod
    def _auto_or_jobs(cls, value: object) -> object:
        # One sentence for both spellings of a mistake, not one per member of the union.
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            number = int(str(value).strip())
        except ValueError:
            number = 0
        if not 1 <= number <= MAX_BATCH_JOBS:
            raise ValueError(f"must be auto or a number of jobs from 1 to {MAX_BATCH_JOBS}")
        return number

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, level: str) -> str:
        if level.upper() not in LOG_LEVELS:
            raise ValueError(f"{level!r} is not a log level: use one of {', '.join(LOG_LEVELS)}")
        return level.upper()

    @field_validator("models")
    @classmethod
    def _at_least_one_model(cls, models: dict[str, ModelSettings]) -> dict[str, ModelSettings]:
        if not models:
            raise ValueError("configure at least one model")
        return models

    @field_validator("default_model")
    @classmethod
    def _default_model_is_known(cls, default_model: str, info: ValidationInfo) -> str:
        # A field validator, not a model one: its error then names SDBOT_DEFAULT_MODEL.
        # `models` is declared first, so it is in `info.data` unless it failed itself.
        models = info.data.get("models")
        if models is not None and default_model not in models:
            known = ", ".join(sorted(models))
            raise ValueError(
                f"{default_model!r} is not a model in SDBOT_MODELS ({known}): set "
                "SDBOT_DEFAULT_MODEL to one of them, or add it to SDBOT_MODELS"
            )
        return default_model

    @property
    def db_path(self) -> Path:
        return self.database_path or self.data_dir / "bot.sqlite3"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def inputs_dir(self) -> Path:
        return self.data_dir / "inputs"

    def credit_policy(self) -> CreditPolicy:
        return CreditPolicy(
            starting=self.starting_credits,
            topup_amount=self.topup_amount,
            topup_ceiling=self.topup_ceiling,
            topup_interval=self.topup_hours * 3600,
        )

    def model_specs(self) -> dict[str, ModelSpec]:
        return {name: model.to_spec(name) for name, model in self.models.items()}


# What a JSON setting looks like, for the line that says one is malformed.
_JSON_EXAMPLES = {
    "owner_ids": "[123456789012345678, 234567890123456789]",
    "admin_guild_ids": "[123456789012345678]",
    "models": '{"sd15": {"source": "stable-diffusion-v1-5/stable-diffusion-v1-5"}}',
}
_SOURCE_FIELD = re.compile(r'field "(?P<field>\w+)" from source "(?P<source>\w+)"')


class _LogLevelAlone(BaseSettings):
    """SDBOT_LOG_LEVEL read on its own, for when the other settings are what failed."""

    model_config = SOURCES

    log_level: str = "INFO"


def debugging() -> bool:
    """Whether the owner asked for tracebacks (SDBOT_LOG_LEVEL=DEBUG), even when the other
    settings cannot be read."""
    try:
        return _LogLevelAlone().log_level.upper() == "DEBUG"
    except (ValidationError, SettingsError):
        return False


def setting_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def explain_settings_error(error: ValidationError | SettingsError) -> list[str]:
    """One line per bad setting, naming it as the owner typed it and how to fix it."""
    if isinstance(error, ValidationError):
        return [_validation_line(problem["loc"], problem["msg"]) for problem in error.errors()]
    # pydantic-settings parses JSON settings before validation and says only which field
    # and source failed; the JSON error itself is the cause.
    match = _SOURCE_FIELD.search(str(error))
    if match is None:
        return [f"Settings could not be read: {error} (see .env.example)"]
    name = setting_name(match["field"])
    where = " in .env" if match["source"].startswith("DotEnv") else ""
    cause = error.__cause__
    why = (
        f"{cause.msg} at character {cause.pos + 1}"
        if isinstance(cause, json.JSONDecodeError)
        else str(cause or error)
    )
    example = _JSON_EXAMPLES.get(match["field"])
    shape = f", e.g. {name}={example}" if example else ""
    return [
        f"Setting {name}{where} is not valid JSON ({why}): write it as JSON, with double "
        f"quotes and no trailing comma{shape} (see .env.example)"
    ]


def _validation_line(loc: tuple[int | str, ...], message: str) -> str:
    # pydantic prefixes the message of a ValueError raised by a validator.
    message = message.removeprefix("Value error, ")
    if not loc:
        return f"Settings: {message} (see .env.example)"
    name = setting_name(str(loc[0]))
    inner = ".".join(str(part) for part in loc[1:])
    where = f" ({inner})" if inner else ""
    return f"Setting {name}{where}: {message} (see .env.example)"

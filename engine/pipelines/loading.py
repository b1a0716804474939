"""Loading models from where users keep them, on the device they have.

Runs on the engine thread only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

from engine.api.errors import ModelLoadError
from engine.api.hashes import FileHashCache
from engine.api.memory import MemoryPlan, MemorySetting, plan_for, resolve_mode
from engine.api.params import ModelInfo
from engine.api.specs import (
    SINGLE_FILE_SUFFIXES,
    ModelFamily,
    ModelSpec,
    family_from_keys,
    looks_like_hub_id,
)

log = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when there is one, then Apple's MPS, then the CPU; or what the owner set."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """Half precision on GPUs (half the memory, tensor cores); fp32 on CPU, where fp16 is slow."""
    if requested != "auto":
        return _DTYPES[requested]
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


@dataclass(slots=True)
class LoadedModel:
    spec: ModelSpec
    pipe: StableDiffusionPipeline | StableDiffusionXLPipeline
    family: ModelFamily
    model_hash: str | None
    load_seconds: float
    # The scheduler config the model shipped with; every sampler is built from it.
    base_scheduler_config: Any = None
    # What the image modes derive from this model (from_pipe pipelines that share its
    # modules, a ControlNet, an inpainting UNet, an upscaler), by name; freed with it.
    derived: dict[str, Any] = field(default_factory=dict)
    # The LoRAs and embeddings applied for the generation in progress (engine/pipelines/lora.py).
    active: Any = None
    # Its memory mode's switches (engine/pipelines/memory.py) and the device it runs on,
    # which an offloaded pipeline's `device` (the CPU, where its weights rest) does not say.
    plan: MemoryPlan = field(default_factory=lambda: plan_for("high"))
    device: torch.device | None = None

    def __post_init__(self) -> None:
        if self.base_scheduler_config is None:
            self.base_scheduler_config = self.pipe.scheduler.config

    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.spec.name,
            family=self.family,
            device=str(self.device or self.pipe.device),
            dtype=str(self.pipe.dtype).removeprefix("torch."),
            load_seconds=self.load_seconds,
            model_hash=self.model_hash,
            memory=self.plan.mode,
        )


def detect_single_file_family(path: Path) -> ModelFamily:
    """Tell SD1, SD2 and SDXL apart from a checkpoint's key names, without loading tensors."""
    if path.suffix.lower() != ".safetensors":
        return "sd1"  # a pickle must be loaded to be read; configure `family` for SD2/SDXL .ckpt
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    return family_from_keys(keys)


def family_of(pipe: DiffusionPipeline) -> ModelFamily:
    if isinstance(pipe, StableDiffusionXLPipeline):
        return "sdxl"
    # SD2 replaced CLIP ViT-L (768 wide) with OpenCLIP ViT-H (1024 wide).
    if pipe.text_encoder.config.hidden_size == 1024:
        return "sd2"
    return "sd1"


def _pipeline_class(family: ModelFamily) -> type[DiffusionPipeline]:
    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _no_safety_checker(family: ModelFamily) -> dict[str, Any]:
    # Content safety is a per-guild policy applied to outputs by the bot, not diffusers'
    # built-in checker that silently blacks images out.
    if family == "sdxl":
        return {}
    return {"safety_checker": None, "requires_safety_checker": False}


def _load_single_file(
    spec: ModelSpec, dtype: torch.dtype, hashes: FileHashCache
) -> tuple[DiffusionPipeline, str]:
    path = Path(spec.source).expanduser()
    if not path.is_file():
        raise ModelLoadError(
            spec.name,
            f"file {path.name} was not found",
            owner_reason=f'file {path} was not found: fix "source" of model {spec.name} '
            "in SDBOT_MODELS",
        )
    family = spec.family or detect_single_file_family(path)
    kwargs: dict[str, Any] = {"dtype": dtype, **_no_safety_checker(family), **_vae(spec, dtype)}
    if spec.config:
        kwargs["config"] = spec.config
    pipe = _pipeline_class(family).from_single_file(str(path), **kwargs)
    return pipe, hashes.short_hash(path)


def _vae(spec: ModelSpec, dtype: torch.dtype) -> dict[str, Any]:
    """The model's own VAE replaced by the configured one (an fp16-safe SDXL VAE, or the
    VAE a checkpoint's author recommends), as A1111's SD VAE setting does."""
    if spec.vae is None:
        return {}
    path = Path(spec.vae).expanduser()
    if spec.vae.lower().endswith(SINGLE_FILE_SUFFIXES):
        return {"vae": AutoencoderKL.from_single_file(str(path), dtype=dtype)}
    location = str(path) if path.is_dir() else spec.vae
    return {"vae": AutoencoderKL.from_pretrained(location, dtype=dtype)}


def _fp16_only(folder: Path) -> bool:
    """A folder saved with `variant="fp16"` only loads when that variant is asked for."""
    unet = folder / "unet"
    return any(unet.glob("*.fp16.safetensors")) and not any(
        path for path in unet.glob("*.safetensors") if ".fp16." not in path.name
    )


def _load_pretrained(spec: ModelSpec, dtype: torch.dtype) -> DiffusionPipeline:
    folder = Path(spec.source).expanduser()
    family = spec.family or spec.guessed_family()
    kwargs: dict[str, Any] = {"dtype": dtype, **_no_safety_checker(family), **_vae(spec, dtype)}
    if folder.is_dir():
        if _fp16_only(folder):
            kwargs["variant"] = "fp16"
        return DiffusionPipeline.from_pretrained(str(folder), **kwargs)
    if not looks_like_hub_id(spec.source):
        # Told here: diffusers would say "neither a valid local path nor a valid repo id".
        raise ModelLoadError(
            spec.name,
            "no such folder",
            public=False,
            owner_reason=f'there is no file or folder {folder.absolute()}: fix "source" of '
            f"model {spec.name} in SDBOT_MODELS",
        )
    if dtype == torch.float16:
        # Hub repos often carry fp16 weights: half the download, where there are some.
        try:
            return DiffusionPipeline.from_pretrained(spec.source, variant="fp16", **kwargs)
        except (OSError, ValueError):
            log.info("model %s has no fp16 variant; loading the full weights", spec.name)
    return DiffusionPipeline.from_pretrained(spec.source, **kwargs)


def load_model(
    spec: ModelSpec,
    device: torch.device,
    dtype: torch.dtype,
    hashes: FileHashCache | None = None,
    memory: MemorySetting = "auto",
) -> LoadedModel:
    """Load a Hub id, a local diffusers folder or a single checkpoint file onto `device`,
    placed as its memory mode (the model's own, else `memory`) says."""
    from engine.pipelines.memory import card_memory, place

    started = time.perf_counter()
    model_hash: str | None = None
    try:
        if spec.is_single_file:
            pipe, model_hash = _load_single_file(spec, dtype, hashes or FileHashCache())
        else:
            pipe = _load_pretrained(spec, dtype)
        if not isinstance(pipe, StableDiffusionPipeline | StableDiffusionXLPipeline):
            raise ModelLoadError(
                spec.name, f"{type(pipe).__name__} is not a Stable Diffusion text-to-image model"
            )
        family = family_of(pipe)
        card = card_memory(device)
        setting: MemorySetting = spec.memory or memory  # type: ignore[assignment]
        plan = plan_for(resolve_mode(setting, family, card))
        place(pipe, plan, device, family)
    except ModelLoadError as error:
        log.error("%s", error.detail)
        raise
    except Exception as error:  # diffusers raises many types for a bad or missing model
        reason = explain_load_failure(spec.name, spec.source, error, device, spec=spec)
        # One line for the owner; the library's traceback only when they ask for it.
        log.error("Model %s could not be loaded: %s", spec.name, reason)
        log.debug("loading model %s from %s failed", spec.name, spec.source, exc_info=error)
        raise ModelLoadError(spec.name, reason, public=False) from error
    pipe.set_progress_bar_config(disable=True)
    seconds = time.perf_counter() - started
    card_text = f"{card / 2**30:.1f} GiB card" if card else "no CUDA card"
    log.info(
        "loaded model %s (%s) on %s/%s in %.1fs, memory mode %s (%s: %s, %s)",
        spec.name,
        type(pipe).__name__,
        device,
        dtype,
        seconds,
        plan.mode,
        setting,
        card_text,
        family,
    )
    return LoadedModel(spec, pipe, family, model_hash, seconds, plan=plan, device=device)


def load_unet(
    source: str, family: ModelFamily, device: torch.device, dtype: torch.dtype
) -> UNet2DConditionModel:
    """Only the UNet of a model (a dedicated inpainting checkpoint): its text encoders and
    VAE are the base model's, so it costs one UNet of memory (SD1.5 ~1.7 GB in fp16,
    SDXL ~5 GB), not a second pipeline."""
    name = Path(source).name or source
    try:
        path = Path(source).expanduser()
        if source.lower().endswith(SINGLE_FILE_SUFFIXES):
            if not path.is_file():
                raise ModelLoadError(
                    name,
                    f"file {path.name} was not found",
                    owner_reason=f'file {path} was not found: fix "inpaint_source" in SDBOT_MODELS',
                )
            unet = UNet2DConditionModel.from_single_file(str(path), dtype=dtype)
        else:
            location = str(path) if path.is_dir() else source
            unet = UNet2DConditionModel.from_pretrained(location, subfolder="unet", dtype=dtype)
        unet.to(device)
    except ModelLoadError as error:
        log.error("%s", error.detail)
        raise
    except Exception as error:  # diffusers raises many types for a bad or missing model
        reason = explain_load_failure(name, source, error, device, setting="inpaint_source")
        log.error("Model %s could not be loaded: %s", name, reason)
        log.debug("loading the UNet of %s (%s) failed", source, family, exc_info=error)
        raise ModelLoadError(name, reason, public=False) from error
    return unet


# A Hub repo id: `owner/name` (huggingface_hub's rule for the characters).
# Network failures by class name: huggingface_hub raises httpx's, older stacks requests'.
_NETWORK_ERRORS = frozenset(
    {"ConnectError", "ConnectTimeout", "ConnectionError", "NetworkError", "TimeoutException"}
)


def _causes(error: BaseException) -> list[BaseException]:
    """The error and everything it was raised from or during (diffusers wraps hub errors)."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _hub_unreachable(causes: list[BaseException]) -> str | None:
    """How the Hub could not be asked, as words, or None when that is not what failed."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    for cause in causes:
        if isinstance(cause, OfflineModeIsEnabled | LocalEntryNotFoundError):
            if constants.HF_HUB_OFFLINE:
                return "the Hub is switched off here (HF_HUB_OFFLINE is set)"
            return "the Hugging Face Hub could not be reached"
        names = {kind.__name__ for kind in type(cause).__mro__}
        if names & _NETWORK_ERRORS:
            return f"the Hugging Face Hub could not be reached ({type(cause).__name__})"
    return None


def explain_load_failure(
    name: str,
    source: str,
    error: BaseException,
    device: torch.device,
    *,
    spec: ModelSpec | None = None,
    setting: str = "source",
) -> str:
    """Why a model did not load and what fixes it, on one line, for the owner's console and
    log (members read only that the log has the details: this names paths and settings)."""
    causes = _causes(error)
    if device.type == "cuda" and not torch.cuda.is_available():
        return (
            f"SDBOT_DEVICE is {device} but torch {torch.__version__} sees no CUDA GPU: set "
            "SDBOT_DEVICE=auto (or cpu), or install a CUDA build of torch"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        return "SDBOT_DEVICE is mps but this machine has no MPS: set SDBOT_DEVICE=auto (or cpu)"
    for cause in causes:
        if isinstance(cause, PermissionError):
            where = cause.filename or source
            return f"permission denied reading {where}: let the bot's user read it"
    unreachable = _hub_unreachable(causes)
    if unreachable is not None:
        if spec is not None and spec.is_single_file:
            if spec.config:
                return (
                    f'its "config" {spec.config} is not in the Hugging Face cache and '
                    f'{unreachable}: set "config" of model {name} in SDBOT_MODELS to a local '
                    "diffusers folder of the same family"
                )
            return (
                "diffusers reads a single file's configuration from the Hub, and "
                f'{unreachable}: set "config" of model {name} in SDBOT_MODELS (--config on '
                "the console) to a local diffusers folder of the same family"
            )
        return (
            f"{source} is not in the Hugging Face cache and {unreachable}: download it once "
            f'with the network (hf download {source}), or set "{setting}" of model {name} in '
            "SDBOT_MODELS to a local diffusers folder"
        )
    from huggingface_hub.errors import RepositoryNotFoundError

    if any(isinstance(cause, RepositoryNotFoundError) for cause in causes):
        return (
            f"there is no model {source} on the Hugging Face Hub (or it needs a login: "
            f'hf auth login): fix "{setting}" of model {name} in SDBOT_MODELS'
        )
    return _short_reason(error)


def _short_reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."

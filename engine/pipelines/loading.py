"""Loading models from where users keep them, on the device they have.

Runs on the engine thread only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel

from engine.api.errors import ModelLoadError
from engine.api.families import FAMILIES, Family, is_checkpoint, safetensors_keys
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
from engine.pipelines.flow_loading import (
    check_flow_options,
    flow_dtype,
    load_flow_pretrained,
    load_flow_single_file,
)
from engine.pipelines.load_errors import explain_load_failure

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
    pipe: DiffusionPipeline  # one of the families' pipelines (engine/api/families.py)
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
    """Tell the families apart from a checkpoint's key names, without loading tensors."""
    if path.suffix.lower() != ".safetensors":
        return "sd1"  # a pickle must be loaded to be read; configure `family` for others
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    return family_from_keys(keys)


def family_of(pipe: DiffusionPipeline) -> ModelFamily:
    """The family of a loaded pipeline: the first whose pipeline class it is and whose probe
    (a component's config value: SD2's 1024-wide text encoder, FLUX.1 dev's guidance
    embedding) it passes; families without a probe are their pipeline's fallback."""
    rows = [row for row in FAMILIES.values() if isinstance(pipe, _pipeline_class(row))]
    for row in rows:
        if row.probe is not None:
            path, key, value = row.probe
            component = getattr(pipe, path.split("/")[0], None)
            if component is not None and getattr(component.config, key, None) == value:
                return row.name
    fallback = [row for row in rows if row.probe is None]
    if not fallback:
        raise ValueError(f"{type(pipe).__name__} is not a pipeline of a family in the table")
    return fallback[0].name


def _pipeline_class(row: Family) -> type[DiffusionPipeline]:
    cls: type[DiffusionPipeline] = getattr(diffusers, row.pipeline)
    return cls


def _no_safety_checker(row: Family) -> dict[str, Any]:
    # Content safety is a per-guild policy applied to outputs by the bot, not diffusers'
    # built-in checker that silently blacks images out (SD 1.x/2.x pipelines carry one).
    if "safety_checker" not in getattr(_pipeline_class(row), "_optional_components", ()):
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
    if spec.family is None and path.suffix.lower() == ".safetensors":
        _check_checkpoint(spec, path)
    row = FAMILIES[spec.family or detect_single_file_family(path)]
    extra = {**_no_safety_checker(row), **_vae(spec, dtype)}
    if row.transformer is not None:
        return load_flow_single_file(spec, row, path, dtype, extra), hashes.short_hash(path)
    kwargs: dict[str, Any] = {"dtype": dtype, **extra}
    if spec.config:
        kwargs["config"] = spec.config
    pipe = _pipeline_class(row).from_single_file(str(path), **kwargs)
    return pipe, hashes.short_hash(path)


def _check_checkpoint(spec: ModelSpec, path: Path) -> None:
    """A file that is no readable checkpoint, or one of no family this bot runs, told in one
    line before diffusers fails on it with a KeyError."""
    keys = safetensors_keys(path)
    if keys is None:
        reason = f"file {path.name} is not a readable .safetensors file"
        fix = "download it again, or fix"
    elif not is_checkpoint(keys):
        labels = ", ".join(row.label for row in FAMILIES.values())
        reason = f"file {path.name} is not a model of a family this bot runs ({labels})"
        fix = 'set its "family" if it is one, or fix'
    else:
        return
    raise ModelLoadError(
        spec.name,
        reason,
        owner_reason=f'{reason}: {fix} "source" of model {spec.name} in SDBOT_MODELS',
    )


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
    for name in ("unet", "transformer"):
        denoiser = folder / name
        if any(denoiser.glob("*.fp16.safetensors")) and not any(
            path for path in denoiser.glob("*.safetensors") if ".fp16." not in path.name
        ):
            return True
    return False


def _load_pretrained(spec: ModelSpec, dtype: torch.dtype) -> DiffusionPipeline:
    folder = Path(spec.source).expanduser()
    row = spec.family_row()
    extra = {**_no_safety_checker(row), **_vae(spec, dtype)}
    kwargs: dict[str, Any] = {"dtype": dtype, **extra}
    if folder.is_dir() and (spec.transformer or spec.quantize):
        return load_flow_pretrained(spec, row, dtype, str(folder), extra)
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
    if spec.transformer or spec.quantize:
        return load_flow_pretrained(spec, row, dtype, spec.source, extra)
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
    hashes = hashes or FileHashCache()
    try:
        guessed = spec.family_row()  # configured, or read from its files or name
        check_flow_options(spec, guessed, device)
        dtype = flow_dtype(guessed, dtype, device)
        if spec.is_single_file:
            pipe, model_hash = _load_single_file(spec, dtype, hashes)
        else:
            pipe = _load_pretrained(spec, dtype)
            if spec.transformer is not None:  # A1111 and Forge hash the file they load
                model_hash = hashes.short_hash(Path(spec.transformer).expanduser())
        family = _loaded_family(spec, pipe, guessed)
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


def _loaded_family(spec: ModelSpec, pipe: DiffusionPipeline, guessed: Family) -> ModelFamily:
    """The loaded pipeline's family; told when it is not the one its settings guessed, since
    the bot gave its jobs that family's defaults and checks."""
    if not any(isinstance(pipe, _pipeline_class(row)) for row in FAMILIES.values()):
        raise ModelLoadError(
            spec.name, f"{type(pipe).__name__} is not a text-to-image model family this bot runs"
        )
    family = family_of(pipe)
    if family != guessed.name:
        log.warning(
            'model %s is %s, but its name made the bot guess %s: set "family": "%s" for it in '
            "SDBOT_MODELS so its jobs get that family's defaults and checks",
            spec.name,
            FAMILIES[family].label,
            guessed.label,
            family,
        )
    return family


def load_unet(
    source: str,
    family: ModelFamily,
    device: torch.device,
    dtype: torch.dtype,
    setting: str = "inpaint_source",
) -> UNet2DConditionModel:
    """Only the UNet of a model (a dedicated inpainting checkpoint, an InstructPix2Pix one):
    its text encoders and VAE are the base model's, so it costs one UNet of memory (SD1.5
    ~1.7 GB in fp16, SDXL ~5 GB), not a second pipeline. `setting`: the model's key that
    names it, for the owner's fix."""
    name = Path(source).name or source
    try:
        path = Path(source).expanduser()
        if source.lower().endswith(SINGLE_FILE_SUFFIXES):
            if not path.is_file():
                raise ModelLoadError(
                    name,
                    f"file {path.name} was not found",
                    owner_reason=f'file {path} was not found: fix "{setting}" in SDBOT_MODELS',
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
        reason = explain_load_failure(name, source, error, device, setting=setting)
        log.error("Model %s could not be loaded: %s", name, reason)
        log.debug("loading the UNet of %s (%s) failed", source, family, exc_info=error)
        raise ModelLoadError(name, reason, public=False) from error
    return unet

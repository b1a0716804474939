"""Models: every configured source is a file, a folder or a cached Hub id that loading
would find, with its family (SD1, SD2, SDXL) read from what is on disk; the helpers (the
safety checker, the upscaler) likewise.

Nothing reaches the network: Hub ids are looked up in the Hugging Face cache only, and no
weight is loaded (a .safetensors file's family comes from its header's key names).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bot.cli.checks.findings import GIB, Finding, failed, passed
from bot.settings import Settings
from engine.api import families
from engine.api.families import family_on_disk
from engine.api.hashes import FileHashCache
from engine.api.image_prompts import locate_adapter
from engine.api.specs import SINGLE_FILE_SUFFIXES, ModelSpec, looks_like_hub_id

PIPELINE_FILES = ("model_index.json",)
COMPONENT_FILES = ("config.json",)
# A safety checker is its own repo (CompVis/stable-diffusion-safety-checker), or the
# `safety_checker` folder of a full SD model (engine/pipelines/safety.py reads either).
CHECKER_FILES = ("config.json", "safety_checker/config.json")
# The repos diffusers reads a single file's configuration from when no "config" is set:
# diffusers' DIFFUSERS_DEFAULT_PIPELINE_PATHS (v1, v2, xl_base); a test keeps them in step.
SINGLE_FILE_CONFIGS: dict[str, str] = {
    "sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
SOURCE_KINDS = "a Hub id, a diffusers folder or a .safetensors/.ckpt file"


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_folder(repo: str, files: Sequence[str]) -> Path | None:
    """The snapshot folder of `repo` in the Hugging Face cache, when one of `files` is in it;
    no network."""
    from huggingface_hub import try_to_load_from_cache

    for name in files:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return Path(found).parents[len(Path(name).parts) - 1]
    return None


def source_finding(
    subject: str,
    source: str,
    field: str,
    *,
    files: Sequence[str] = PIPELINE_FILES,
    single_file: bool = True,
) -> Finding:
    """Whether `source` is a file, a folder or a cached Hub id: what loading it would find.
    `field` says where the owner fixes it (`its "source"`)."""
    path = Path(source).expanduser()
    kinds = SOURCE_KINDS if single_file else "a Hub id or a diffusers folder"
    if path.is_file():
        if single_file and source.lower().endswith(SINGLE_FILE_SUFFIXES):
            return passed(subject, f"file {path} ({path.stat().st_size / GIB:.2f} GiB)")
        return failed(
            subject, f"{path} is a file, not a diffusers folder", f"point {field} at {kinds}"
        )
    if path.is_dir():
        if any((path / name).is_file() for name in files):
            return passed(subject, f"folder {path}")
        return failed(
            subject,
            f"folder {path} holds no {files[0]}: it is not a diffusers model",
            f"point {field} at the folder that holds {files[0]}",
        )
    if source.lower().endswith(SINGLE_FILE_SUFFIXES) or not looks_like_hub_id(source):
        return failed(
            subject, f"there is no file or folder {path.absolute()}", f"fix {field} ({kinds})"
        )
    if hub_cache_folder(source, files) is not None:
        return passed(subject, f"Hub id {source}, in the Hugging Face cache")
    if hub_offline():
        return failed(
            subject,
            f"{source} is not in the Hugging Face cache and HF_HUB_OFFLINE is set",
            f"download it once with the network (hf download {source}), or point {field} at "
            "a local diffusers folder",
        )
    return passed(subject, f"Hub id {source}, not downloaded yet: fetched at first use")


def model_findings(
    model: ModelSpec, *, console: bool = False, derived: bool = True, hashed: bool = False
) -> list[Finding]:
    """The model's source with its family, and whatever else it loads: a single file's
    configuration and, with `derived`, its inpainting checkpoint and ControlNets.
    `console`: the model is `dream --model PATH`, fixed with --model and --config.
    `hashed`: a single file's A1111 model hash too (it reads the whole file: doctor only)."""
    name = model.name
    subject = "--model" if console else f"SDBOT_MODELS ({name})"
    found = source_finding(subject, model.source, subject if console else 'its "source"')
    findings = [found]
    if found.ok:
        family = model_family(model)
        if family is None:
            return [
                failed(
                    subject,
                    f"{model.source} is not a readable .safetensors file",
                    "download it again, or fix "
                    + (subject if console else f'its "source" ({SOURCE_KINDS})'),
                )
            ]
        detail = f"{family}, {found.detail}"
        if hashed and model.is_single_file:
            # What A1111 writes as "Model hash", so an owner can match a member's PNG.
            detail += f", hash {FileHashCache().short_hash(Path(model.source))}"
        findings[0] = passed(subject, detail)
        if model.is_single_file:
            findings.append(_single_file_config(model, family.split(" ")[0], console=console))
    if not derived:
        return findings
    if model.inpaint_source:
        findings.append(
            source_finding(
                f"SDBOT_MODELS ({name}.inpaint_source)",
                model.inpaint_source,
                'its "inpaint_source"',
                files=("unet/config.json", *PIPELINE_FILES),
            )
        )
    if model.edit_source:
        findings.append(
            source_finding(
                f"SDBOT_MODELS ({name}.edit_source)",
                model.edit_source,
                'its "edit_source"',
                files=("unet/config.json", *PIPELINE_FILES),
            )
        )
    if model.ip_adapter:
        findings.append(ip_adapter_finding(model))
    for kind, source in sorted(model.controlnets.items()):
        findings.append(
            source_finding(
                f"SDBOT_MODELS ({name}.controlnets.{kind})",
                source,
                f'"controlnets" {kind}',
                files=COMPONENT_FILES,
            )
        )
    return findings


def _single_file_config(model: ModelSpec, family: str, *, console: bool) -> Finding:
    subject = "--config" if console else f"SDBOT_MODELS ({model.name}.config)"
    if model.config:
        field = subject if console else 'its "config"'
        return source_finding(subject, model.config, field, single_file=False)
    repo = SINGLE_FILE_CONFIGS.get(family) or families.family(family).reference_repo
    if hub_cache_folder(repo, PIPELINE_FILES) is not None:
        return passed(subject, f"not set: diffusers takes {repo}'s from the Hugging Face cache")
    if hub_offline():
        fix = (
            "pass --config with a local diffusers folder of the same family"
            if console
            else f'set "config" of model {model.name} in SDBOT_MODELS to a local diffusers '
            "folder of the same family"
        )
        return failed(
            subject,
            f"not set, and a single {family} file loads with {repo}'s configuration, which is "
            "not in the Hugging Face cache while HF_HUB_OFFLINE is set",
            fix,
        )
    return passed(subject, f"not set: diffusers fetches {repo}'s at first load")


def model_family(model: ModelSpec) -> str | None:
    """The family from what is on disk (a file's key names, a folder's configs), read as the
    engine reads it (engine/api/families.py), without loading anything; the configured
    family wins, and a name is the last resort. None for a .safetensors file whose header
    cannot be read."""
    if model.family is not None:
        return model.family
    path = Path(model.source).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            return 'sd1 (a .ckpt is not opened to tell: set "family" for SD2 or SDXL)'
        return family_on_disk(str(path))
    folder = path if path.is_dir() else hub_cache_folder(model.source, PIPELINE_FILES)
    if folder is None:
        return f"{model.guessed_family()} (guessed from its name)"
    return family_on_disk(str(folder)) or "sd1 (model_index.json names no pipeline of ours)"


def ip_adapter_finding(model: ModelSpec) -> Finding:
    """The model's IP-Adapter weights and its image encoder, where diffusers'
    `load_ip_adapter` will look for them (the settings checked the source's shape)."""
    assert model.ip_adapter is not None
    subject = f"SDBOT_MODELS ({model.name}.ip_adapter)"
    where = locate_adapter(model.ip_adapter, model.ip_adapter_encoder)
    needed = (where.weights_path, f"{where.encoder_path}/config.json")
    folder = Path(where.source)
    if folder.is_dir():
        missing = [name for name in needed if not (folder / name).is_file()]
        if not missing:
            return passed(
                subject, f"{where.name}, its image encoder in {folder / where.encoder_path}"
            )
        return failed(
            subject,
            f"{folder} has no {missing[0]}",
            "put the adapter's image encoder (a CLIP vision model folder) there, or name its "
            'folder in "ip_adapter_encoder"',
        )
    if all(hub_cache_folder(where.source, [name]) is not None for name in needed):
        return passed(subject, f"{where.name}, in the Hugging Face cache")
    if hub_offline():
        return failed(
            subject,
            f"{where.source}'s {where.weights_path} or its image encoder is not in the Hugging "
            "Face cache and HF_HUB_OFFLINE is set",
            f"download them once with the network (hf download {where.source} --include "
            f"'{where.weights_path}' '{where.encoder_path}/*'), or point \"ip_adapter\" at a "
            "local file",
        )
    return passed(subject, f"{where.name}, not downloaded yet: fetched at first use")


def helper_findings(settings: Settings) -> list[Finding]:
    """The safety checker and the upscaler: models too, loaded at the first image they see."""
    findings = []
    if settings.safety_checker is None:
        findings.append(passed("SDBOT_SAFETY_CHECKER", "not set: images are not checked"))
    else:
        findings.append(
            source_finding(
                "SDBOT_SAFETY_CHECKER",
                settings.safety_checker,
                "SDBOT_SAFETY_CHECKER",
                files=CHECKER_FILES,
                single_file=False,
            )
        )
    if settings.upscaler is not None:
        findings.append(
            source_finding("SDBOT_UPSCALER", settings.upscaler, "SDBOT_UPSCALER", single_file=False)
        )
    return findings + describe_findings(settings)


def describe_findings(settings: Settings) -> list[Finding]:
    """/describe's captioner and CLIP ranker (transformers folders): both, or neither."""
    pair = {"SDBOT_CAPTIONER": settings.captioner, "SDBOT_CLIP_RANKER": settings.clip_ranker}
    if not any(pair.values()):
        return []
    findings = []
    for subject, source in pair.items():
        other = next(name for name in pair if name != subject)
        if not source:
            findings.append(
                failed(
                    subject,
                    f"not set, and /describe needs it beside {other}",
                    f"set {subject} (a Hub id or folder), or empty {other} to leave /describe off",
                )
            )
        else:
            findings.append(
                source_finding(subject, source, subject, files=("config.json",), single_file=False)
            )
    return findings

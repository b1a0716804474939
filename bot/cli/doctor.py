"""`python -m bot doctor`, and the checks the bot makes before it logs in to Discord.

Most of an owner's first hour is set-up mistakes: a device this machine lacks, a data
folder that cannot be written, a model path with a typo, a Hub id that is not cached on a
machine without network. Found at the first `/dream`, each is a traceback in the log and
"the bot's log has the details" for a member; found here, each is one line that names the
setting and the fix, before anything is loaded or anyone is connected.

Every check is a `Finding`. `startup_problems` is what the bot, `dream` and `selftest`
refuse to start with (exit 2); `doctor` prints every finding, ✓ or ✗, like `flutter
doctor`, and exits 1 if any failed. Nothing here reaches the network: Hub ids are looked up
in the Hugging Face cache only, and torch is imported only by the checks that need it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import platform
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bot.settings import Settings
from engine.api.specs import SINGLE_FILE_SUFFIXES, ModelSpec, family_from_keys, looks_like_hub_id

GIB = 1024**3
# Below this a day of images (a few hundred PNGs of ~0.5 MB) or a database that grows can
# fill the disk, and SQLite fails writes with "database or disk is full".
MIN_FREE_DISK = 1 * GIB
# An SD1.5 pipeline in fp16 takes about 2.5 GB of VRAM: less free than that cannot load one.
MIN_FREE_VRAM = 2.5 * GIB

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
# safetensors refuses headers over 100 MB; a larger length means the file is something else.
MAX_HEADER = 100_000_000
SOURCE_KINDS = "a Hub id, a diffusers folder or a .safetensors/.ckpt file"
TORCH_BUILDS = "README, GPUs and torch"


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's outcome: what was checked (a setting, as the owner writes it), what was
    found, and, when it failed, what to do."""

    ok: bool
    subject: str
    detail: str
    fix: str = ""

    def problem(self) -> str:
        """The one line the bot prints when it refuses to start."""
        fix = f": {self.fix}" if self.fix and not self.ok else ""
        return f"{self.subject}: {self.detail}{fix}"

    def line(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.problem()}"


def passed(subject: str, detail: str) -> Finding:
    return Finding(True, subject, detail)


def failed(subject: str, detail: str, fix: str) -> Finding:
    return Finding(False, subject, detail, fix)


# -- the machine -------------------------------------------------------------------------


def device_finding(requested: str, *, describe: bool = False) -> Finding:
    """Whether SDBOT_DEVICE names a device torch can use here. `describe` adds the GPU's
    name, which initialises CUDA: the doctor may, the bot's start leaves that to the engine
    thread (the one thread that touches CUDA)."""
    import torch

    subject = f"SDBOT_DEVICE={requested}"
    build = f"torch {torch.__version__}"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            why = (
                "is a CPU-only build"
                if torch.version.cuda is None
                else "sees no CUDA GPU (no driver, or CUDA_VISIBLE_DEVICES hides it)"
            )
            return failed(
                subject,
                f"{build} {why}",
                f"set SDBOT_DEVICE=auto (or cpu), or install a CUDA build of torch "
                f"({TORCH_BUILDS})",
            )
        count = torch.cuda.device_count()
        index = int(requested.partition(":")[2] or 0)
        if index >= count:
            return failed(
                subject,
                f"this machine has {count} CUDA GPU(s), numbered from 0",
                f"set SDBOT_DEVICE to one of cuda:0 to cuda:{count - 1}",
            )
        name = f": {torch.cuda.get_device_name(index)}" if describe else ""
        return passed(subject, f"CUDA GPU {index}{name}")
    if requested == "mps" and not torch.backends.mps.is_available():
        return failed(
            subject, "this machine has no Apple MPS device", "set SDBOT_DEVICE=auto (or cpu)"
        )
    if requested == "auto" and describe:
        from engine.pipelines.loading import pick_device

        return passed(subject, f"picks {pick_device('auto')}")
    return passed(subject, f"{requested} is available")


def torch_findings() -> list[Finding]:
    """The torch build, its GPUs and their free memory, and the libraries that load models."""
    try:
        import torch
    except ImportError as error:
        return [failed("torch", f"cannot be imported ({error})", f"install it ({TORCH_BUILDS})")]
    findings = []
    if torch.version.cuda is None:
        build = "a CPU-only build"
    else:
        build = f"built for CUDA {torch.version.cuda}"
    mps = ", Apple MPS available" if torch.backends.mps.is_available() else ""
    findings.append(passed("torch", f"{torch.__version__}, {build}{mps}"))
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            name = torch.cuda.get_device_name(index)
            memory = f"{name}, {free / GIB:.1f} GiB free of {total / GIB:.1f} GiB"
            if free < MIN_FREE_VRAM:
                findings.append(
                    failed(
                        f"GPU {index}",
                        memory,
                        "other programs hold its memory (nvidia-smi lists them): close them",
                    )
                )
            else:
                findings.append(passed(f"GPU {index}", memory))
    findings.append(_libraries_finding())
    return findings


def _libraries_finding() -> Finding:
    versions = {name: _version(name) for name in ("diffusers", "transformers")}
    shown = ", ".join(f"{name} {version or 'missing'}" for name, version in versions.items())
    if None in versions.values():
        return failed("libraries", shown, "run make run (or pip install -e .) to install them")
    transformers = versions["transformers"] or ""
    if tuple(int(part) for part in re.findall(r"\d+", transformers)[:2]) >= (5, 6):
        # transformers 5.6 flattened CLIPTextModel, which breaks clip_skip and single-file
        # SD1 loading in diffusers (diffusers issue 14124); pyproject.toml pins below it.
        return failed("libraries", shown, 'install the pinned one: pip install "transformers<5.6"')
    try:
        import diffusers  # noqa: F401  (a broken install fails here, not at the first job)
    except Exception as error:  # an install broken in any way: say so, not a traceback
        return failed("libraries", f"diffusers cannot be imported ({error})", "reinstall it")
    return passed("libraries", shown)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# -- folders and disk --------------------------------------------------------------------


def folder_finding(subject: str, folder: Path) -> Finding:
    """Whether `folder` can be written, without creating it: the nearest folder that exists
    on its way must let us create a file, or it would fail at the first image saved."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "a file" if existing == folder else f"a file, so {folder} cannot be a folder"
        return failed(
            subject, f"{existing} is {where}", f"set {subject} to a folder that can be written"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return failed(
            subject,
            f"{folder} cannot be written ({error.strerror or error})",
            f"let this user write to {existing}, or set {subject} to a folder that can be written",
        )
    shown = "" if existing == folder else " (created at first start)"
    return passed(subject, f"{folder} can be written{shown}")


def disk_finding(folder: Path) -> Finding:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError as error:
        return failed("disk", f"free space unknown ({error})", "check the data folder's disk")
    detail = f"{free / GIB:.1f} GiB free for {folder}"
    if free < MIN_FREE_DISK:
        return failed(
            "disk", detail, "free some space, or set SDBOT_RETENTION_DAYS or SDBOT_RETENTION_MAX_GB"
        )
    return passed("disk", detail)


# -- the database ------------------------------------------------------------------------


def database_findings(settings: Settings) -> list[Finding]:
    """SQLite's own integrity check and the books' (`db check`), read-only: a database an
    older bot wrote is reported, not migrated."""
    path = settings.db_path
    subject = "database"
    if not path.exists():
        return [passed(subject, f"none yet at {path}: the bot creates it at first start")]
    restore = "stop the bot and restore the latest backup (python -m bot db backup makes them)"
    try:
        with sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True) as db:
            rows = db.execute("PRAGMA integrity_check").fetchall()
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as error:
        return [failed(subject, f"{path} cannot be read ({error})", restore)]
    if rows != [("ok",)]:
        return [failed(subject, f"{path} is damaged (integrity_check: {rows[0][0]})", restore)]
    from data.store import _migrations

    latest = max((number for number, _, _ in _migrations()), default=0)
    findings = [passed(subject, f"{path} passes SQLite's integrity check")]
    if version < latest:
        findings.append(
            passed("books", f"not checked: the bot upgrades the database to {latest} at start")
        )
        return findings
    findings.append(asyncio.run(_books_finding(settings)))
    return findings


async def _books_finding(settings: Settings) -> Finding:
    from bot.community.credits import CreditService
    from data.credits import CreditRepository
    from data.store import Store

    store = Store(settings.db_path)
    try:
        await store.open()
        problems = await CreditService(CreditRepository(store, settings.credit_policy()), 1).check()
    except sqlite3.Error as error:
        return failed("books", f"could not be checked ({error})", "python -m bot db check")
    finally:
        await store.close()
    if problems:
        return failed(
            "books",
            f"{len(problems)} problem(s), the first: {problems[0]}",
            "python -m bot db check lists them all",
        )
    return passed("books", "the ledger, the balances and the jobs agree (db check)")


# -- models ------------------------------------------------------------------------------


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
    model: ModelSpec, *, console: bool = False, derived: bool = True
) -> list[Finding]:
    """The model's source with its family, and whatever else it loads: a single file's
    configuration and, with `derived`, its inpainting checkpoint and ControlNets.
    `console`: the model is `dream --model PATH`, fixed with --model and --config."""
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
        findings[0] = passed(subject, f"{family}, {found.detail}")
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
    repo = SINGLE_FILE_CONFIGS.get(family, SINGLE_FILE_CONFIGS["sd1"])
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
    """SD1, SD2 or SDXL from what is on disk (a file's key names, a folder's configs), without
    loading anything; the configured family wins, and a name is the last resort. None for a
    .safetensors file whose header cannot be read."""
    if model.family is not None:
        return model.family
    path = Path(model.source).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".safetensors":
            return _file_family(path)
        return 'sd1 (a .ckpt is not opened to tell: set "family" for SD2 or SDXL)'
    folder = path if path.is_dir() else hub_cache_folder(model.source, PIPELINE_FILES)
    if folder is None:
        return f"{model.guessed_family()} (guessed from its name)"
    return _folder_family(folder)


def _file_family(path: Path) -> str | None:
    """Read from the safetensors header (8 bytes of length, then JSON): no tensor is loaded."""
    try:
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size <= MAX_HEADER:
                return None
            header = json.loads(handle.read(size))
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    if not isinstance(header, dict):
        return None
    keys = set(header)
    return family_from_keys(keys)


def _folder_family(folder: Path) -> str:
    index = _read_json(folder / "model_index.json")
    if "XL" in str(index.get("_class_name", "")):
        return "sdxl"
    # SD2 replaced CLIP ViT-L (768 wide) with OpenCLIP ViT-H (1024 wide).
    encoder = _read_json(folder / "text_encoder" / "config.json")
    return "sd2" if encoder.get("hidden_size") == 1024 else "sd1"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


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
    return findings


# -- the token ---------------------------------------------------------------------------


def token_finding(token: SecretStr | None) -> Finding:
    """The token's shape, never its value: three dot-separated parts, the first the bot's
    user id in base64. Catches the client secret, quotes and `Bot ` pasted with it."""
    subject = "SDBOT_DISCORD_TOKEN"
    portal = "copy it again from the developer portal: your application, Bot, Reset Token"
    if token is None:
        return failed(subject, "not set", "copy .env.example to .env and put the bot's token there")
    value = token.get_secret_value()
    if value != value.strip() or value[:1] in "\"'":
        return failed(subject, "has spaces or quotes around it", "remove them")
    if value.lower().startswith("bot "):
        return failed(subject, 'starts with "Bot "', "put the token alone")
    parts = value.split(".")
    if len(parts) != 3 or not all(parts):
        return failed(
            subject,
            f"is not shaped like a bot token ({len(parts)} part(s); a token has 3, joined by "
            "dots: is it the client secret or the public key?)",
            portal,
        )
    try:
        bot_id = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        bot_id = ""
    if not bot_id.isdigit():
        return failed(subject, "its first part is not a bot's id", portal)
    return passed(subject, f"set, shaped like the token of bot {bot_id} (not shown)")


# -- what runs them ----------------------------------------------------------------------


def startup_problems(settings: Settings) -> list[Finding]:
    """What the bot refuses to start with, before it logs in to Discord: each would fail
    later, at the first job or the first image saved, far from whoever can fix it."""
    findings = [
        device_finding(settings.device),
        folder_finding("SDBOT_DATA_DIR", settings.data_dir),
    ]
    if settings.database_path is not None:
        findings.append(folder_finding("SDBOT_DATABASE_PATH", settings.database_path.parent))
    for model in settings.model_specs().values():
        findings += model_findings(model)
    findings += helper_findings(settings)
    return [finding for finding in findings if not finding.ok]


def doctor_findings(settings: Settings) -> list[Finding]:
    findings = [passed("Python", platform.python_version())]
    machine = torch_findings()
    findings += machine
    if machine[0].ok:  # without torch there is no device to ask about
        findings.append(device_finding(settings.device, describe=True))
    findings.append(folder_finding("SDBOT_DATA_DIR", settings.data_dir))
    if settings.database_path is not None:
        findings.append(folder_finding("SDBOT_DATABASE_PATH", settings.database_path.parent))
    findings.append(disk_finding(settings.data_dir))
    findings += database_findings(settings)
    for model in settings.model_specs().values():
        findings += model_findings(model)
    findings.append(passed("SDBOT_DEFAULT_MODEL", f"{settings.default_model} is configured"))
    findings += helper_findings(settings)
    findings.append(token_finding(settings.discord_token))
    return findings


def doctor(settings: Settings) -> int:
    """Print every check, ✓ or ✗ with the fix; 0 when all pass, 1 otherwise."""
    findings = doctor_findings(settings)
    for finding in findings:
        print(finding.line())
    failures = sum(not finding.ok for finding in findings)
    if failures:
        print(f"{failures} of {len(findings)} checks failed.")
        return 1
    print(f"All {len(findings)} checks passed.")
    return 0

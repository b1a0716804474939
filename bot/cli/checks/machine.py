"""The machine: the torch build, its GPUs and their free memory, the libraries that load
models, and whether SDBOT_DEVICE names a device this machine has.

torch is imported inside the checks, never at import time: a torch that cannot be imported
is a finding (`torch_findings`), not an ImportError.
"""

from __future__ import annotations

import re
from importlib import metadata

from bot.cli.checks.findings import GIB, Finding, failed, passed
from engine.api.memory import MemorySetting, resolve_mode
from engine.api.specs import ModelSpec

# An SD1.5 pipeline in fp16 takes about 2.5 GB of VRAM: less free than that cannot load one.
MIN_FREE_VRAM = 2.5 * GIB
TORCH_BUILDS = "README, GPUs and torch"


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


def memory_finding(setting: MemorySetting, device: str, models: dict[str, ModelSpec]) -> Finding:
    """The memory mode each model would run in on this machine's card: what `auto` picks
    from the card's total memory and the model's family, or what the owner set."""
    import torch

    total: int | None = None
    card = "no CUDA card (offloading needs one; modes only slice and tile)"
    if torch.cuda.is_available() and not device.startswith(("cpu", "mps")):
        index = int(device.partition(":")[2] or 0)
        total = int(torch.cuda.mem_get_info(index)[1])
        card = f"a {total / GIB:.1f} GiB card"
    modes = ", ".join(
        f"{name} {resolve_mode(spec.memory or setting, spec.guessed_family(), total)}"  # type: ignore[arg-type]
        for name, spec in sorted(models.items())
    )
    return passed(f"SDBOT_MEMORY={setting}", f"on {card}: {modes}")


def optimizer_finding() -> Finding:
    """8-bit AdamW for training on small cards, where bitsandbytes installs."""
    version = _version("bitsandbytes")
    if version is None:
        return passed("8-bit AdamW", "bitsandbytes is not installed: /train uses 32-bit AdamW")
    return passed("8-bit AdamW", f"bitsandbytes {version}, used in memory modes medium and low")

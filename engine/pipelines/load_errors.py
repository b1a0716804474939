"""Why a model did not load, in one line for its owner: the device, a permission, the Hub
out of reach, a repository that is not there. Engine thread only (it asks torch which
devices there are).
"""

from __future__ import annotations

import torch

from engine.api.specs import ModelSpec

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

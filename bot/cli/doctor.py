"""`python -m bot doctor`, and the checks the bot makes before it logs in to Discord.

Most of an owner's first hour is set-up mistakes: a device this machine lacks, a data
folder that cannot be written, a model path with a typo, a Hub id that is not cached on a
machine without network. Found at the first `/dream`, each is a traceback in the log and
"the bot's log has the details" for a member; found here, each is one line that names the
setting and the fix, before anything is loaded or anyone is connected.

Every check is a `Finding` (bot/cli/checks/, by subject). `startup_problems` is what the
bot, `dream` and `selftest` refuse to start with (exit 2); `doctor` prints every finding,
✓ or ✗, like `flutter doctor`, and exits 1 if any failed. Nothing here reaches the network:
Hub ids are looked up in the Hugging Face cache only, and torch is imported only by the
checks that need it.
"""

from __future__ import annotations

import platform

from bot.cli.checks.discord_token import token_finding
from bot.cli.checks.findings import Finding, passed
from bot.cli.checks.machine import (
    device_finding,
    memory_finding,
    optimizer_finding,
    torch_findings,
)
from bot.cli.checks.models import SINGLE_FILE_CONFIGS, helper_findings, model_findings
from bot.cli.checks.queue import queue_findings
from bot.cli.checks.storage import database_findings, disk_finding, folder_finding
from bot.settings import Settings

# The checks were this module's before bot/cli/checks/; tests and callers import them here.
__all__ = [
    "SINGLE_FILE_CONFIGS",
    "Finding",
    "device_finding",
    "doctor",
    "doctor_findings",
    "folder_finding",
    "model_findings",
    "startup_problems",
    "token_finding",
    "torch_findings",
]


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
    findings += queue_findings(settings)
    return [finding for finding in findings if not finding.ok]


def doctor_findings(settings: Settings) -> list[Finding]:
    findings = [passed("Python", platform.python_version())]
    machine = torch_findings()
    findings += machine
    if machine[0].ok:  # without torch there is no device to ask about
        findings.append(device_finding(settings.device, describe=True))
        findings.append(memory_finding(settings.memory, settings.device, settings.model_specs()))
        findings.append(optimizer_finding())
    findings.append(folder_finding("SDBOT_DATA_DIR", settings.data_dir))
    if settings.database_path is not None:
        findings.append(folder_finding("SDBOT_DATABASE_PATH", settings.database_path.parent))
    findings.append(disk_finding(settings.data_dir))
    findings += database_findings(settings)
    for model in settings.model_specs().values():
        findings += model_findings(model, hashed=True)
    findings.append(passed("SDBOT_DEFAULT_MODEL", f"{settings.default_model} is configured"))
    findings += helper_findings(settings)
    findings += queue_findings(settings, workers=True)
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

"""A check's outcome, one line for the owner: what was checked, what was found, the fix."""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


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

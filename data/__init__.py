"""The SQLite store: one aiosqlite connection, numbered migrations, small repositories."""

from data.credits import (
    Account,
    CreditPolicy,
    CreditRepository,
    InsufficientCredits,
    LedgerEntry,
    LedgerKind,
)
from data.guilds import GuildSettingsRepository
from data.job_admission import DuplicateAction, DuplicateInteraction, QueueCaps, QueueFull
from data.job_records import Job, JobImage, JobStatus, Origin
from data.jobs import JobRepository
from data.store import Store

__all__ = [
    "Account",
    "CreditPolicy",
    "CreditRepository",
    "DuplicateAction",
    "DuplicateInteraction",
    "GuildSettingsRepository",
    "InsufficientCredits",
    "Job",
    "JobImage",
    "JobRepository",
    "JobStatus",
    "LedgerEntry",
    "LedgerKind",
    "Origin",
    "QueueCaps",
    "QueueFull",
    "Store",
]

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
from data.jobs import (
    DuplicateAction,
    DuplicateInteraction,
    Job,
    JobImage,
    JobRepository,
    JobStatus,
    Origin,
    QueueCaps,
    QueueFull,
)
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

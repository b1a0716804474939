"""The SQLite store: one aiosqlite connection, numbered migrations, small repositories."""

from data.credits import (
    Account,
    CreditPolicy,
    CreditRepository,
    InsufficientCredits,
    LedgerEntry,
    LedgerKind,
)
from data.jobs import (
    DuplicateInteraction,
    Job,
    JobImage,
    JobRepository,
    JobStatus,
    QueueCaps,
    QueueFull,
)
from data.store import Store

__all__ = [
    "Account",
    "CreditPolicy",
    "CreditRepository",
    "DuplicateInteraction",
    "InsufficientCredits",
    "Job",
    "JobImage",
    "JobRepository",
    "JobStatus",
    "LedgerEntry",
    "LedgerKind",
    "QueueCaps",
    "QueueFull",
    "Store",
]

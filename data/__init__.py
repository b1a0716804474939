"""The SQLite store: one aiosqlite connection, numbered migrations, small repositories."""

from data.jobs import Job, JobImage, JobRepository, JobStatus
from data.store import Store

__all__ = ["Job", "JobImage", "JobRepository", "JobStatus", "Store"]

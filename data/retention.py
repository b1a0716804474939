"""What retention reads and writes: jobs whose files may go, and marking them expired.

The policy (which jobs, which inputs) lives in bot/jobs/retention.py; this module only holds
the SQL, so the rules can be read without it and the statements tested on their own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from data.job_records import Job, JobStatus
from data.store import Store

FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class RetentionRepository:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def unexpired(self) -> list[Job]:
        """Every job whose files are still kept, pending ones included, oldest ended first.

        Pending jobs have no end yet; they sort by when they were asked for, and the policy
        never picks them anyway.
        """
        async with self._store.db.execute(
            "SELECT * FROM jobs WHERE expired_at IS NULL"
            " ORDER BY COALESCE(finished_at, created_at), id"
        ) as cursor:
            rows = await cursor.fetchall()
        return [Job.from_row(row) for row in rows]

    async def expire(self, job_ids: Iterable[int]) -> int:
        """Mark finished jobs expired and drop their image rows, in one transaction.

        A job that is not finished (it cannot be, but the row is the truth) or already
        expired is left alone, images included. Returns how many were marked. The job row,
        its ledger rows and a LoRA's reference to it stay: the books must still balance.
        """
        marked = 0
        now = time.time()
        marks = ", ".join("?" for _ in FINISHED)
        async with self._store.transaction() as db:
            for job_id in job_ids:
                async with db.execute(
                    "UPDATE jobs SET expired_at = ?"
                    f" WHERE id = ? AND expired_at IS NULL AND status IN ({marks})",
                    (now, job_id, *FINISHED),
                ) as cursor:
                    if cursor.rowcount != 1:
                        continue
                marked += 1
                async with db.execute("DELETE FROM images WHERE job_id = ?", (job_id,)):
                    pass
        return marked

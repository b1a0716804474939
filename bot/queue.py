"""The asyncio side of the job queue. The engine thread never touches it.

A dispatcher task takes the next batch of compatible jobs from here and hands it to the
engine thread. Order is first come, first served for now; the fairness policy belongs in
`take_batch` and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from engine.txt2img import EngineJob


@dataclass(slots=True)
class QueuedJob:
    job_id: int
    user_id: int
    engine_job: EngineJob
    queued_at: float
    batch_key: Hashable = field(init=False)

    def __post_init__(self) -> None:
        self.batch_key = self.engine_job.params.batch_key()


class JobQueue:
    def __init__(self, max_batch: int = 1) -> None:
        self.max_batch = max_batch
        self._waiting: list[QueuedJob] = []
        self._changed = asyncio.Event()
        self.running: list[QueuedJob] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def put(self, job: QueuedJob) -> int:
        """Queue a job; returns its position (1 = next), counting a batch already running."""
        self._waiting.append(job)
        self._changed.set()
        return self.position(job.job_id)

    def position(self, job_id: int) -> int:
        for index, job in enumerate(self._waiting):
            if job.job_id == job_id:
                return index + 1 + (1 if self.running else 0)
        return 0

    def remove(self, job_id: int) -> QueuedJob | None:
        for index, job in enumerate(self._waiting):
            if job.job_id == job_id:
                return self._waiting.pop(index)
        return None

    async def take_batch(self) -> list[QueuedJob]:
        """Wait for a job, then take it and up to `max_batch - 1` compatible ones behind it."""
        while not self._waiting:
            self._changed.clear()
            await self._changed.wait()
        head = self._waiting.pop(0)
        batch = [head]
        for job in list(self._waiting):
            if len(batch) >= self.max_batch:
                break
            if job.batch_key == head.batch_key:
                self._waiting.remove(job)
                batch.append(job)
        return batch

    def snapshot(self) -> dict[str, Any]:
        return {
            "waiting": [job.job_id for job in self._waiting],
            "running": [job.job_id for job in self.running],
        }

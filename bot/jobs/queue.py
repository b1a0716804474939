"""The asyncio side of the job queue. The engine thread never touches it.

Fair by construction: each member has their own line, and lines are served round-robin,
one job per member per turn, so a member with ten jobs waiting cannot starve one with a
single job. A dispatcher task takes the next batch from here and hands it to the engine.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field

from bot.jobs.kinds import JobKind, Work


@dataclass(slots=True)
class QueuedJob:
    job_id: int
    user_id: int
    engine_job: Work
    queued_at: float
    kind: JobKind  # whose handler runs it (bot/jobs/kinds.py)
    batch_key: Hashable = field(init=False)

    def __post_init__(self) -> None:
        self.batch_key = self.engine_job.batch_key()


# Whether these works may run as one batch (the engine's memory budget); None: any number.
Fits = Callable[[Sequence[Work]], bool]


class JobQueue:
    def __init__(self, max_batch: int = 1, fits: Fits | None = None) -> None:
        self.max_batch = max_batch
        self.fits = fits
        self._lines: dict[int, deque[QueuedJob]] = {}
        self._turns: deque[int] = deque()  # members with waiting jobs, next to serve first
        self._changed = asyncio.Event()
        self.running: list[QueuedJob] = []

    def __len__(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def put(self, job: QueuedJob) -> int:
        """Queue a job; returns its position (1 = next), counting a batch already running."""
        line = self._lines.get(job.user_id)
        if line is None:
            line = self._lines[job.user_id] = deque()
            self._turns.append(job.user_id)
        line.append(job)
        self._changed.set()
        return self.position(job.job_id)

    def in_order(self) -> Iterator[QueuedJob]:
        """Waiting jobs in the order they will be served: round r takes each line's r-th job."""
        lines = [self._lines[user] for user in self._turns]
        for depth in range(max((len(line) for line in lines), default=0)):
            for line in lines:
                if depth < len(line):
                    yield line[depth]

    def position(self, job_id: int) -> int:
        """1-based place in line (0 when not waiting); a running batch counts as one ahead."""
        for index, job in enumerate(self.in_order()):
            if job.job_id == job_id:
                return index + 1 + (1 if self.running else 0)
        return 0

    def get(self, job_id: int) -> QueuedJob | None:
        return next((job for job in self.in_order() if job.job_id == job_id), None)

    def remove(self, job_id: int) -> QueuedJob | None:
        for user, line in self._lines.items():
            for job in line:
                if job.job_id == job_id:
                    line.remove(job)
                    if not line:
                        self._drop_line(user)
                    return job
        return None

    def _drop_line(self, user: int) -> None:
        del self._lines[user]
        self._turns.remove(user)

    def _pop_front(self, user: int) -> QueuedJob:
        line = self._lines[user]
        job = line.popleft()
        self._turns.remove(user)
        if line:
            self._turns.append(user)  # served: to the back of the round
        else:
            del self._lines[user]
        return job

    async def take_batch(self) -> list[QueuedJob]:
        """Wait for a job, then take the next member's job and compatible ones of the members
        after them in turn (one each), up to `max_batch` jobs and what `fits` allows."""
        while not self._turns:
            self._changed.clear()
            await self._changed.wait()
        head = self._pop_front(self._turns[0])
        batch = [head]
        for user in list(self._turns):
            if len(batch) >= self.max_batch:
                break
            candidate = self._lines[user][0]
            if user == head.user_id or candidate.batch_key != head.batch_key:
                continue
            works = [job.engine_job for job in (*batch, candidate)]
            if self.fits is None or self.fits(works):
                batch.append(self._pop_front(user))
        return batch

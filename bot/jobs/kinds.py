"""Job kinds, and the handler each registers with the scheduler (the way arq registers
functions): the scheduler knows a job only through its kind's handler.

Adding a kind is a new `JobKind` member and a handler in the table the bot is built with
(bot/client/runner.py); the scheduler does not change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from data.jobs import Job
from engine.api.jobs import EngineJob, TrainingJob
from engine.api.params import GenerationParams

if TYPE_CHECKING:
    from bot.jobs.contracts import Requester
    from bot.jobs.queue import QueuedJob

# What the engine is given for a queued job.
Work = EngineJob | TrainingJob
# Posts a stored outcome through the observer it is given; returns the message holding it.
Post = Callable[[Any], Awaitable[int | None]]


class JobKind(StrEnum):
    GENERATE = "generate"  # /dream and every image mode: rows of kind dream, img2img, ...
    TRAIN = "train"  # /train

    @classmethod
    def of(cls, job: Job) -> JobKind:
        """The kind of a stored row (its `kind` column names the mode for generation)."""
        return cls.TRAIN if job.kind == cls.TRAIN.value else cls.GENERATE


class Unrestorable(Exception):
    """A pending row that cannot be queued again; the message is for its member."""


class JobLife(Protocol):
    """What a handler may ask of the scheduler while it runs a batch (bot/jobs/scheduler.py)."""

    async def idle(self, awaitable: Awaitable[Any], *, reason: str) -> Any:
        """Await work done elsewhere (the engine), declared as the bot being idle."""

    def stop_running(self, entry: QueuedJob) -> None:
        """The job has left the engine: a /cancel now is told it has ended."""

    async def fail(self, entry: QueuedJob, message: str, *, cancelled: bool = False) -> None:
        """End the job without a result: refunded, and its member told, exactly once."""

    async def fail_quietly(self, entry: QueuedJob, message: str) -> None:
        """fail(), where a database that refuses the write must not stop the caller."""

    def learned(self, units: float, seconds: float) -> None:
        """A batch worth `units` standard images ran in `seconds` (for wait estimates)."""

    def paused(self, job_id: int) -> bool:
        """Stopped by a shutdown (to resume at the next start), not by its member."""

    def take_requester(self, job_id: int) -> Requester:
        """Who asked where, as the Discord layer said when the job was accepted."""

    def deliver(self, job_id: int, post: Post) -> None:
        """Post a stored success through the job's observer (retried while Discord fails)."""


class JobHandler(Protocol):
    """One job kind: how its work is rebuilt, run, shown and delivered again."""

    kind: JobKind
    # Stopped at its next step by a shutdown and resumed at the next start, instead of being
    # waited for (training runs for an hour).
    pauses_on_shutdown: bool

    async def restore(self, job: Job) -> Work:
        """The work of a pending row, to queue it again; Unrestorable says why not."""

    async def run(self, batch: list[QueuedJob], life: JobLife) -> None:
        """Run a claimed batch and end each job through `life` (or store its result)."""

    async def redelivery(self, job: Job) -> Post | None:
        """How to post a stored success that was never posted; None: nothing to post."""

    async def discard(self, job_id: int) -> None:
        """A job cancelled before it ran: what it left on disk goes."""

    def units(self, work: Work) -> float:
        """Standard images' worth of queued work, for wait estimates."""

    def shown(self, work: Work) -> GenerationParams:
        """How queued work reads in /queue."""

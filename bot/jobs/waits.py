"""How long members will wait: the engine's measured speed, in seconds per standard image
(a 512x512, 20-step image), applied to what is running and queued ahead of each job, over
as many batches at once as the engine runs (its pace: one for the engine thread, the live
GPU workers weighted by their measured speeds for a fleet)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from bot.jobs.contracts import QueueEntry
from bot.jobs.kinds import JobHandler, JobKind
from bot.jobs.queue import JobQueue, QueuedJob
from engine.api.port import Pace

# Told with each job waiting while the engine cannot be reached (GPU workers whose Redis
# does not answer): nothing is lost, it only waits.
PAUSED = (
    "The queue is paused: the GPU workers cannot be reached. Your job is kept and runs when "
    "they can."
)


class Waits:
    def __init__(
        self, handlers: Mapping[JobKind, JobHandler], pace: Callable[[], Pace] = Pace
    ) -> None:
        self._handlers = handlers
        self._pace = pace
        self.seconds_per_unit: float | None = None  # None until a batch has run

    def learned(self, units: float, seconds: float) -> None:
        """A batch worth `units` standard images ran in `seconds`."""
        if seconds <= 0:
            return
        sample = seconds / max(units, 1e-6)
        previous = self.seconds_per_unit
        # An exponential moving average: recent jobs count most, one outlier does not rule.
        self.seconds_per_unit = sample if previous is None else 0.7 * previous + 0.3 * sample

    @property
    def paused(self) -> bool:
        """Nothing runs until the engine can be reached again (a member is told PAUSED)."""
        return self._pace().paused

    def entries(self, queue: JobQueue) -> list[QueueEntry]:
        """Everything running (position 0) and waiting, in the order it will be served, with
        the wait before each starts once the speed is known (and the engine is there)."""
        pace = self._pace()
        per_unit = self._fleet_seconds_per_unit(pace)
        entries = [self._entry(q, 0, None) for q in queue.running]
        # On average a running job is half done.
        waited = sum(self._units(q) for q in queue.running) / 2 * (per_unit or 0.0)
        offset = 1 if queue.running else 0
        for index, queued in enumerate(queue.in_order()):
            wait = waited if per_unit is not None else None
            entries.append(self._entry(queued, index + 1 + offset, wait, pace.paused))
            waited += self._units(queued) * (per_unit or 0.0)
        return entries

    def _fleet_seconds_per_unit(self, pace: Pace) -> float | None:
        """Seconds the queue advances by one standard image: none known while paused or
        with no engine serving it."""
        if self.seconds_per_unit is None or pace.paused or pace.lanes <= 0:
            return None
        return self.seconds_per_unit / pace.lanes

    def _entry(
        self, queued: QueuedJob, position: int, wait: float | None, paused: bool = False
    ) -> QueueEntry:
        shown = self._handlers[queued.kind].shown(queued.engine_job)
        training = queued.kind is JobKind.TRAIN
        return QueueEntry(queued.job_id, queued.user_id, position, shown, wait, training, paused)

    def _units(self, queued: QueuedJob) -> float:
        return self._handlers[queued.kind].units(queued.engine_job)

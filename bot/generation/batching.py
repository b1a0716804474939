"""How many members' images share one UNet batch: as many as the engine's card holds
(engine/api/memory.py `batch_images`), the largest throughput lever on a GPU."""

from __future__ import annotations

from collections.abc import Sequence

from bot.jobs.kinds import Work
from engine.api.jobs import EngineJob
from engine.api.port import EnginePort


class ImageBudget:
    """The queue's `fits` for SDBOT_MAX_BATCH=auto: a batch fits when its images do not
    exceed what the engine says one batch of that model and size can hold. Without an
    answer (no CUDA card, a fleet), each job runs alone, as SDBOT_MAX_BATCH=1 does."""

    def __init__(self, engine: EnginePort) -> None:
        self.engine = engine

    def __call__(self, works: Sequence[Work]) -> bool:
        jobs = [work for work in works if isinstance(work, EngineJob)]
        if len(jobs) != len(works):  # training runs alone
            return False
        budget = self.engine.batch_images(jobs[0].params)
        if budget is None:
            return False
        # An interpolation's frames count as its images (issue 18).
        return sum(job.params.images for job in jobs) <= budget

"""Retention: old results leave the disk, so an owner's disk does not fill; their rows stay.

Every job keeps its images (DATA_DIR/images/<job id>) and the pictures it started from
(DATA_DIR/inputs, stored by content), and nothing else ever removes them. A sweep, once an
hour, removes the files of finished jobs that ended more than SDBOT_RETENTION_DAYS ago and,
oldest first, of more finished jobs while the two folders hold more than
SDBOT_RETENTION_MAX_GB. The job rows stay, marked `expired_at`: the ledger and trained
LoRAs refer to them, and a button on an expired result can say the image expired.

Never removed: a queued or running job's files, and an input that any kept job names in
its parameters (a queued job needs it to run, a kept result's reroll to run again). Inputs
are shared by content, so one goes only when every job naming it has expired. Trained
LoRAs live in DATA_DIR/loras and are never touched.

No SQL here (data/retention.py) and no Discord: the bot starts a Sweeper in setup_hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.jobs.inputs import INPUT_KEY, input_path
from bot.settings import Settings
from data.jobs import Job, JobStatus
from data.retention import RetentionRepository
from data.store import Store

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 3600.0  # seconds; files age in days, an hourly look is plenty
DAY = 86400.0
GB = 10**9  # as disk sizes are sold and file managers count
# An input being removed is renamed to this first and only deleted once the database says
# no kept job names it (see Sweeper._remove_inputs).
ASIDE_SUFFIX = ".expiring"


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long finished jobs keep their files, and how much disk they may take."""

    max_age: float | None = None  # seconds after a job ended; None: no age limit
    max_bytes: int | None = None  # images and inputs together; None: no budget

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        days, gb = settings.retention_days, settings.retention_max_gb
        return cls(
            max_age=days * DAY if days > 0 else None,
            max_bytes=max(1, int(gb * GB)) if gb > 0 else None,
        )

    @property
    def enabled(self) -> bool:
        return self.max_age is not None or self.max_bytes is not None


@dataclass(frozen=True, slots=True)
class SweepReport:
    jobs: int  # jobs marked expired
    bytes: int  # bytes removed from the disk


def input_keys(params: Any) -> set[str]:
    """Every stored input a job's parameters name.

    Generation names them in init_image, mask_image and control_image, training in
    image_keys. Any string shaped like a key counts, wherever it sits, so an input a later
    parameter names is protected without a change here; a prompt that happens to look like
    one only keeps a file longer.
    """
    if isinstance(params, str):
        return {params} if INPUT_KEY.match(params) else set()
    if isinstance(params, dict):
        params = params.values()
    found: set[str] = set()
    if isinstance(params, Iterable):  # lists and tuples; numbers and None name nothing
        for value in params:
            found |= input_keys(value)
    return found


def tree_bytes(path: Path) -> int:
    """Bytes of the files under a folder (or of one file); 0 when it is not there."""
    if path.is_file():
        return _file_bytes(path)
    total = 0
    for root, _dirs, files in os.walk(path):
        total += sum(_file_bytes(Path(root) / name) for name in files)
    return total


def _file_bytes(path: Path) -> int:
    try:
        return path.lstat().st_size
    except FileNotFoundError:  # removed meanwhile: a member deleted the result
        return 0


class Sweeper:
    """Runs the sweep every `interval` seconds until stopped; `sweep()` runs one."""

    def __init__(
        self,
        repository: RetentionRepository,
        images_dir: Path,
        inputs_dir: Path,
        policy: RetentionPolicy,
        *,
        interval: float = SWEEP_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repository = repository
        self.images_dir = images_dir
        self.inputs_dir = inputs_dir
        self.policy = policy
        self.interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._resting = False

    @classmethod
    def for_settings(cls, settings: Settings, store: Store) -> Sweeper | None:
        """The owner's sweeper, or None when retention is off (the default)."""
        policy = RetentionPolicy.from_settings(settings)
        if not policy.enabled:
            return None
        return cls(RetentionRepository(store), settings.images_dir, settings.inputs_dir, policy)

    # -- the periodic task --------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="sd-retention")

    async def stop(self) -> None:
        """End the task. A sweep under way is let finish: it may have inputs set aside."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        if self._resting:
            task.cancel()
        await asyncio.wait({task})

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.sweep()
            except Exception:  # a full disk or a locked file: log it, try again next time
                log.exception("retention sweep failed; next try in %.0f s", self.interval)
            if self._stopping:
                return
            self._resting = True
            try:
                await asyncio.sleep(self.interval)
            finally:
                self._resting = False

    # -- one sweep ----------------------------------------------------------------------

    async def sweep(self) -> SweepReport:
        """Remove what the policy says may go; one log line when something went."""
        await asyncio.to_thread(self._restore_set_aside)
        chosen, keys = await asyncio.to_thread(self._choose, await self.repository.unexpired())
        if not chosen:
            return SweepReport(0, 0)
        removed, freed = await asyncio.to_thread(self._remove_images, chosen)
        # Files first, rows last: a crash in between leaves the jobs to the next sweep, which
        # finds less to remove, rather than rows marked expired over files nobody removes.
        freed += await self._remove_inputs(keys, set(removed))
        expired = await self.repository.expire(removed)
        if expired:
            log.info(
                "retention: %d job(s) expired, %d bytes removed (%.1f MB)",
                expired,
                freed,
                freed / 1e6,
            )
        return SweepReport(expired, freed)

    def _choose(self, jobs: list[Job]) -> tuple[list[int], list[str]]:
        """The finished jobs whose files go, oldest first, and the inputs only they name.

        `jobs` are every kept job, oldest ended first: an input's count is how many of them
        name it, so it goes when the last one does.
        """
        names = {job.id: input_keys(job.params) for job in jobs}
        named = Counter(key for keys in names.values() for key in keys)
        policy = self.policy
        cutoff = self._clock() - policy.max_age if policy.max_age is not None else None
        over = None
        if policy.max_bytes is not None:
            over = tree_bytes(self.images_dir) + tree_bytes(self.inputs_dir) - policy.max_bytes
        chosen: list[int] = []
        keys: list[str] = []
        for job in jobs:
            if not job.status.finished or awaits_posting(job):
                continue
            ended = job.finished_at if job.finished_at is not None else job.created_at
            too_old = cutoff is not None and ended < cutoff
            # Sorted by end: once a job is recent enough and the budget is met, so are the rest.
            if not too_old and (over is None or over <= 0):
                break
            chosen.append(job.id)
            freed = tree_bytes(self.images_dir / str(job.id))
            for key in names[job.id]:
                named[key] -= 1
                if named[key] == 0:
                    keys.append(key)
                    freed += _file_bytes(self._input_path(key))
            if over is not None:
                over -= freed
        return chosen, keys

    def _remove_images(self, job_ids: list[int]) -> tuple[list[int], int]:
        """Remove the jobs' image folders: the jobs whose folder is gone, and the bytes."""
        removed, freed = [], 0
        for job_id in job_ids:
            folder = self.images_dir / str(job_id)
            size = tree_bytes(folder)
            try:
                shutil.rmtree(folder)
            except FileNotFoundError:
                pass  # a txt2img job that failed, or a result its member deleted
            except OSError as error:  # left for the next sweep, not marked expired
                log.warning("retention: could not remove %s: %s", folder, error)
                continue
            removed.append(job_id)
            freed += size
        return removed, freed

    async def _remove_inputs(self, keys: list[str], expiring: set[int]) -> int:
        """Remove inputs no kept job names, checking the database again after setting them
        aside: a job made meanwhile from the same picture (its bytes, hence its key, were
        already stored, so nothing was written) finds its input put back."""
        if not keys:
            return 0
        aside = await asyncio.to_thread(self._set_aside, keys)
        if not aside:
            return 0
        kept = await self.repository.unexpired()
        needed = set().union(*(input_keys(job.params) for job in kept if job.id not in expiring))
        return await asyncio.to_thread(self._settle_aside, aside, needed)

    def _input_path(self, key: str) -> Path:
        return input_path(self.inputs_dir, key)  # keys here matched INPUT_KEY in input_keys

    def _set_aside(self, keys: list[str]) -> list[tuple[str, Path, int]]:
        aside = []
        for key in keys:
            path = self._input_path(key)
            size = _file_bytes(path)
            try:
                os.replace(path, path.with_name(path.name + ASIDE_SUFFIX))
            except FileNotFoundError:
                continue
            aside.append((key, path, size))
        return aside

    def _settle_aside(self, aside: list[tuple[str, Path, int]], needed: set[str]) -> int:
        freed = 0
        for key, path, size in aside:
            moved = path.with_name(path.name + ASIDE_SUFFIX)
            if key in needed:
                _put_back(moved, path)
                continue
            moved.unlink(missing_ok=True)
            freed += size
        return freed

    def _restore_set_aside(self) -> None:
        """Put back inputs a sweep set aside and was stopped before settling (a crash); this
        sweep then decides about them again."""
        for moved in self.inputs_dir.glob(f"*/*{ASIDE_SUFFIX}"):
            _put_back(moved, moved.with_name(moved.name.removesuffix(ASIDE_SUFFIX)))


def _put_back(moved: Path, path: Path) -> None:
    if path.exists():  # the same bytes were stored again meanwhile
        moved.unlink(missing_ok=True)
        return
    with contextlib.suppress(FileNotFoundError):
        os.replace(moved, path)


def awaits_posting(job: Job) -> bool:
    """A result stored but not yet posted (the redelivery at start-up posts it): its files
    are what will be posted, so they stay whatever their age."""
    return job.status is JobStatus.SUCCEEDED and job.delivered_at is None

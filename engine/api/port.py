"""The port between the bot's scheduler and an engine: what any engine adapter offers.

The scheduler submits a batch and awaits its results; progress reaches each job's `report`
on the event loop and a set `cancel` event stops the job at its next step. The in-process
engine thread (`engine.worker.EngineWorker`) is the first adapter; an adapter that hands
batches to GPU workers on other machines is another. Torch-free: the bot imports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, Self

from engine.api.jobs import EngineJob, TrainingJob, TrainingOutcome
from engine.api.params import GenerationParams, GenerationResult, ModelInfo


@dataclass(frozen=True, slots=True)
class WorkerState:
    """One GPU that serves the bot, as /workers shows it."""

    name: str
    models: tuple[str, ...]
    busy: bool
    served: int  # batches since it started
    seconds_per_batch: float | None  # its measured speed; None before its first batch
    seen_seconds_ago: float  # 0 for the bot's own engine thread


@dataclass(frozen=True, slots=True)
class Pace:
    """How the engine serves the queue now, for the waits members are shown."""

    # Batches it runs at once, each counted at the typical measured speed: 1 for the
    # engine thread; for GPU workers, the live ones, a GPU twice as fast counting twice.
    lanes: float = 1.0
    paused: bool = False  # it cannot be reached: nothing runs until it can


class SteadyPace:
    """The pace of an engine that is always there and runs one batch at a time."""

    def pace(self) -> Pace:
        return Pace()

    async def pace_changed(self, seen: Pace) -> Pace:
        await asyncio.Event().wait()  # it never changes
        return seen


class EnginePort(Protocol):
    @property
    def running(self) -> bool:
        """Started and not stopped: it takes work."""

    def start(self) -> None: ...

    async def __aenter__(self) -> Self:
        """Started (unless it already runs); used as the bot's resource."""

    async def __aexit__(self, *exc_info: object) -> None:
        """stop()"""

    async def stop(self) -> None:
        """Finish the work in hand, refuse the rest (EngineStopped), and release the engine."""

    async def free_slot(self) -> Callable[[], None]:
        """Wait until the engine can take one more batch; returns what gives the slot back.
        The scheduler holds a slot for each batch it runs, so batches are released in the
        queue's fair order exactly as fast as the engine (or the fleet) frees up."""

    def batch_images(self, params: GenerationParams) -> int | None:
        """How many images like these (model, size) one batch may hold, from the card's
        memory; None when the engine has no opinion, and the queue batches nothing."""

    async def generate(self, jobs: Sequence[EngineJob]) -> list[GenerationResult]:
        """One result per job, in order, for a batch of compatible jobs (same batch key).

        Raises JobCancelled when every job was cancelled, EngineError (its `user_message`
        is for members) when the batch failed.
        """

    async def train(self, job: TrainingJob) -> TrainingOutcome:
        """Train, then make the sample images; JobCancelled or EngineError as above."""

    async def check_safety(self, source: str, images: Sequence[bytes]) -> list[bool]:
        """Whether each PNG is flagged by the safety checker at `source`."""

    async def describe(self, png: bytes) -> list[str]:
        """Four prompts in A1111's syntax for a picture (/describe), the same four for the
        same picture; EngineError (its `user_message` is for members) when the captioner or
        the ranker is not set up or fails."""

    async def workers(self) -> list[WorkerState]:
        """The GPUs serving the bot now: its own engine thread, or each live worker."""

    async def preload(self, model: str) -> ModelInfo:
        """Load a model ahead of its first job (or find it loaded) and describe it."""

    def pace(self) -> Pace:
        """How it serves the queue now (what the waits in /queue are made from)."""

    async def pace_changed(self, seen: Pace) -> Pace:
        """The pace once it differs from `seen` in whether it is paused."""

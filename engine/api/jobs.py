"""A job as the engine sees it. No torch here: the bot's queue holds these."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.api.params import GeneratedImage, GenerationParams, Progress
from engine.api.training_params import TrainingParams, TrainingProgress, TrainingResult


@dataclass(slots=True)
class EngineJob:
    """One job as the engine sees it. `report` is called on the engine thread."""

    job_id: int
    params: GenerationParams
    report: Callable[[Progress], None] = lambda progress: None
    cancel: threading.Event = field(default_factory=threading.Event)
    # The bytes of the stored images `params` names (init, mask, control), by key.
    inputs: dict[str, bytes] = field(default_factory=dict)

    def batch_key(self) -> object:
        return self.params.batch_key()


@dataclass(slots=True)
class TrainingJob:
    """A /train job: it has the engine to itself while it runs, and never shares a batch.

    `workdir` keeps its checkpoints (a restart resumes from them); `class_dir` caches prior-
    preservation images per model and class word.
    """

    job_id: int
    params: TrainingParams
    workdir: str
    class_dir: str | None = None
    # The training's steps, then its sample images' (generation's Progress).
    report: Callable[[TrainingProgress | Progress], None] = lambda progress: None
    cancel: threading.Event = field(default_factory=threading.Event)
    # The prepared training images, by the keys `params.image_keys` names.
    inputs: dict[str, bytes] = field(default_factory=dict)

    def batch_key(self) -> object:
        return ("train", self.job_id)


@dataclass(frozen=True, slots=True)
class TrainingOutcome:
    result: TrainingResult
    samples: list[GeneratedImage]

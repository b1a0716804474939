"""What /train tells its caller: the trained file, its samples, and how it hears of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from data.jobs import Job
from data.loras import Lora
from engine.api.training_params import TrainingParams, TrainingProgress


@dataclass(frozen=True, slots=True)
class Sample:
    png: bytes
    infotext: str
    spoiler: bool = False  # the server's safety policy covers it


@dataclass(frozen=True, slots=True)
class TrainedOutcome:
    job: Job
    params: TrainingParams
    lora: Lora
    samples: list[Sample]
    seconds: float
    final_loss: float
    resumed_from: int

    @property
    def usage(self) -> str:
        """What a member types to use it."""
        subject = f"a photo of {self.params.token} {self.params.class_word}".strip()
        if self.lora.method == "lora":
            return f"<lora:{self.lora.name}:0.8> {subject}"
        return subject


class TrainingObserver(Protocol):
    def progress(self, job_id: int, progress: TrainingProgress) -> None: ...

    async def trained(self, outcome: TrainedOutcome) -> int | None: ...

    async def failed(self, job: Job, message: str, refunded: int) -> None: ...

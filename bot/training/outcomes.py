"""What /train tells its caller: the trained file, its samples, and how it hears of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bot.jobs.contracts import QueueEntry
from data.jobs import Job
from data.loras import Lora
from engine.api.lora_files import SAFETENSORS, a1111_copy
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
    def a1111_file(self) -> Path | None:
        """The copy in A1111's format (LoRAs trained before there were copies have none)."""
        copy = a1111_copy(Path(self.lora.path))
        return copy if copy.is_file() else None

    @property
    def a1111_name(self) -> str:
        return a1111_name(self.lora)

    @property
    def usage(self) -> str:
        """What a member types to use it."""
        subject = f"a photo of {self.params.token} {self.params.class_word}".strip()
        if self.lora.method == "lora":
            return f"<lora:{self.lora.name}:0.8> {subject}"
        return subject


def a1111_name(lora: Lora) -> str:
    """What the member saves the A1111 copy as: A1111 names a LoRA, and an embedding's
    token, by its file name."""
    return (lora.name if lora.method == "lora" else lora.token) + SAFETENSORS


class TrainingObserver(Protocol):
    def progress(self, job_id: int, progress: TrainingProgress) -> None: ...

    async def trained(self, outcome: TrainedOutcome) -> int | None: ...

    async def failed(self, job: Job, message: str, refunded: int) -> None: ...

    async def waiting(self, entry: QueueEntry) -> None:
        """As JobObserver.waiting (bot/jobs/contracts.py)."""

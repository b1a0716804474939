"""Where a training job keeps its files, all under DATA_DIR, with no part of a path taken
from what a member typed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from engine.api.training_params import TrainingParams, sanitize_name

_SAFE_PART = re.compile(r"[^a-z0-9_-]")


@dataclass(frozen=True, slots=True)
class TrainingFolders:
    data_dir: Path

    def workdir(self, job_id: int) -> Path:
        """Its checkpoints: a restart resumes from the last one."""
        return self.data_dir / "training" / str(job_id)

    def class_dir(self, params: TrainingParams) -> Path:
        """Prior-preservation images, cached per model and class word. Model names come
        from the owner's settings, class words from members: both are reduced to safe
        characters."""
        model = _SAFE_PART.sub("_", params.model.lower())
        word = _SAFE_PART.sub("_", params.class_word.lower()) or "none"
        return self.data_dir / "class-images" / model / word

    def lora_path(self, owner_id: int, job_id: int, name: str) -> Path:
        return (
            self.data_dir / "loras" / str(owner_id) / f"{sanitize_name(name)}-{job_id}.safetensors"
        )

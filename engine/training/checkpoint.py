"""A training job's checkpoint: the trainable tensors, the optimizer, the gradient scaler
and the step, written atomically every `checkpoint_every` steps.

Every random draw derives from (seed, purpose, step) (engine/training/loop.py), so that is
all a resumed run needs to draw exactly what an uninterrupted one draws. The fingerprint
ties a checkpoint to its job: another job's, or one of an older format, is ignored.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.api.files import write_atomically
from engine.api.training_params import CHECKPOINT_FILE, TrainingParams
from engine.pipelines.loading import LoadedModel

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FILE", "Checkpoint", "job_fingerprint"]

CHECKPOINT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a job's checkpoint lives, and the fingerprint that makes it this job's."""

    path: Path
    fingerprint: str

    def read(self) -> dict[str, Any] | None:
        """The state this job saved; None when there is none, or it is unreadable or another
        job's (logged: training starts over rather than fail)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign file: start over rather than fail the job
            log.warning("checkpoint %s is unreadable; training from the start", self.path)
            return None
        if (
            state.get("version") != CHECKPOINT_VERSION
            or state.get("fingerprint") != self.fingerprint
        ):
            log.warning("checkpoint %s is from another job; training from the start", self.path)
            return None
        return state

    def write(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(
            {"version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, **state}, buffer
        )
        write_atomically(self.path, buffer.getvalue())


def job_fingerprint(loaded: LoadedModel, params: TrainingParams, images: Sequence[bytes]) -> str:
    """What makes a checkpoint this job's: parameters, base model and the exact images."""
    data = params.to_dict()
    data.pop("checkpoint_every")
    data.pop("image_keys")  # the images themselves are hashed below
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode())
    digest.update(f"{loaded.spec.name}:{loaded.model_hash}:{loaded.family}".encode())
    for image in images:
        digest.update(hashlib.sha256(image).digest())
    return digest.hexdigest()

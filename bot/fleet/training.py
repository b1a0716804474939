"""A /train job on a GPU worker: run in this machine's folders, named as the bot names its
own (bot/training/folders.py), and its files sent back as bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bot.training.folders import TrainingFolders
from engine.api.jobs import TrainingJob
from engine.api.lora_files import a1111_copy
from engine.api.training_params import TrainingParams
from engine.worker import EngineWorker


async def train(
    engine: EngineWorker,
    workdir: Path,
    request: dict[str, Any],
    report: Callable[[Any], None],
    cancels: list[Any],
) -> dict[str, Any]:
    """The outcome of the training `request` asks for, as the message that carries it."""
    job_id = int(request["job_id"])
    params = TrainingParams.from_dict(request["params"])
    # Nothing of a path comes from the message but the job id.
    folders = TrainingFolders(workdir)
    job = TrainingJob(
        job_id,
        params,
        str(folders.workdir(job_id)),
        str(folders.class_dir(params)) if params.prior_preservation else None,
        report=report,
        inputs=dict(request["inputs"]),
    )
    cancels.append(job.cancel)
    outcome = await engine.train(job)
    result = outcome.result
    copy = a1111_copy(Path(result.path))  # the file for A1111, Forge and ComfyUI
    return {
        "file": await asyncio.to_thread(Path(result.path).read_bytes),
        "a1111_file": await asyncio.to_thread(_read_if_there, copy),
        "metadata": result.metadata,
        "seconds": result.seconds,
        "final_loss": result.final_loss,
        "resumed_from": result.resumed_from,
        "samples": [asdict(image) for image in outcome.samples],
    }


def _read_if_there(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None

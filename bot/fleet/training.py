"""A /train job on the fleet: the worker's side (run in this machine's folders, named as
the bot names its own, bot/training/folders.py, its files sent back as bytes) and the
bot's (the request out, the files written where its engine thread would write them).
Checkpoints travel both ways as they are written (bot/fleet/checkpoints.py)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bot.fleet import checkpoints
from bot.fleet.checkpoints import COPY_ERRORS, Relay
from bot.training.folders import TrainingFolders
from engine.api.errors import EngineError, JobCancelled
from engine.api.files import write_atomically
from engine.api.jobs import TrainingJob, TrainingOutcome
from engine.api.lora_files import a1111_copy
from engine.api.params import GeneratedImage, Progress
from engine.api.training_params import (
    CHECKPOINT_FILE,
    TrainingParams,
    TrainingProgress,
    TrainingResult,
)
from engine.worker import EngineWorker

log = logging.getLogger(__name__)

# RedisEngine._send: (request, model, reports, progress class, cancels) -> the outcome.
Send = Callable[..., Awaitable[Any]]


# -- the worker's side ------------------------------------------------------------------


async def train(
    db: Any,
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
    checkpoint = folders.workdir(job_id) / CHECKPOINT_FILE
    try:  # the fleet's latest (a worker that died wrote it), over any of this machine's
        await checkpoints.get(db, job_id, checkpoint)
    except COPY_ERRORS as error:
        log.warning(
            "job=%s: no checkpoint from Redis (%s); from this machine's, if any", job_id, error
        )
    relay = Relay(lambda: checkpoints.put(db, job_id, checkpoint), f"job {job_id}'s checkpoint")
    job = TrainingJob(
        job_id,
        params,
        str(folders.workdir(job_id)),
        str(folders.class_dir(params)) if params.prior_preservation else None,
        report=_sending_checkpoints(report, relay),
        inputs=dict(request["inputs"]),
    )
    cancels.append(job.cancel)
    try:
        outcome = await engine.train(job)
    except (EngineError, JobCancelled):
        await relay.flush()  # a training put back by a shutdown resumes from its latest
        await _remove(folders.workdir(job_id))
        raise
    await relay.close()
    try:
        return await _outcome_message(outcome)
    finally:
        await _remove(folders.workdir(job_id))  # all of it is on its way to the bot


def _sending_checkpoints(
    report: Callable[[Any], None], relay: Relay
) -> Callable[[TrainingProgress | Progress], None]:
    """Each step's progress at once, and a step's checkpoint to Redis, the bot told (its
    progress again, `checkpointed`) only once the copy is there to read."""

    def relayed(progress: TrainingProgress | Progress) -> None:
        if not isinstance(progress, TrainingProgress) or not progress.checkpointed:
            report(progress)  # a step, or a sample image's (generation's) progress
            return
        report(replace(progress, checkpointed=False))
        relay.changed(lambda: report(progress))

    return relayed


async def _outcome_message(outcome: TrainingOutcome) -> dict[str, Any]:
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


async def _remove(folder: Path) -> None:
    await asyncio.to_thread(shutil.rmtree, folder, True)


# -- the bot's side ---------------------------------------------------------------------


async def send(db: Any, send: Send, job: TrainingJob) -> TrainingOutcome:
    """`job` trained by a worker: its checkpoints copied to the job's folder as they come
    (a restart resumes from there), the trained file written beside them. The bot's own
    copy is in Redis already (`checkpoints.offer`)."""
    workdir = Path(job.workdir)
    checkpoint = workdir / CHECKPOINT_FILE
    relay = Relay(
        lambda: checkpoints.get(db, job.job_id, checkpoint), f"job {job.job_id}'s checkpoint"
    )

    def report(progress: TrainingProgress | Progress) -> None:
        if getattr(progress, "checkpointed", False):  # in Redis now: the bot's copy too
            relay.changed()
        else:
            job.report(progress)

    request = {
        "kind": "train",
        "job_id": job.job_id,
        "params": job.params.to_dict(),
        "inputs": job.inputs,
    }
    try:
        outcome = await send(
            request, job.params.model, {job.job_id: report}, _progress_of, [job.cancel]
        )
    except JobCancelled:
        await relay.flush()  # a shutdown's pause resumes from the latest at the next start
        raise
    except EngineError:
        await checkpoints.forget(db, job.job_id)  # a failed job is not run again
        raise
    finally:
        await relay.close()
    await checkpoints.forget(db, job.job_id)
    return await _written(workdir, outcome)


def _progress_of(**values: Any) -> TrainingProgress | Progress:
    """A progress line of the training, or of one of its sample images (generation's, as
    the engine thread reports them in this process too)."""
    if "loss" in values:
        return TrainingProgress(**values)
    return Progress(**values)


async def _written(workdir: Path, outcome: dict[str, Any]) -> TrainingOutcome:
    """The outcome with its files on the bot's disk: nothing assumes a shared disk."""
    path = workdir / "trained.safetensors"
    if outcome.get("a1111_file"):  # its copy for A1111 first, as the engine writes them
        await asyncio.to_thread(write_atomically, a1111_copy(path), outcome["a1111_file"])
    await asyncio.to_thread(write_atomically, path, outcome["file"])
    result = TrainingResult(
        path,
        dict(outcome["metadata"]),
        float(outcome["seconds"]),
        float(outcome["final_loss"]),
        int(outcome["resumed_from"]),
    )
    return TrainingOutcome(result, [GeneratedImage(**image) for image in outcome["samples"]])

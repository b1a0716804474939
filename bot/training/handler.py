"""Running /train jobs: the engine has them to itself; the result is kept as a LoRA (or
embedding) file registered to its member, and its sample images are reviewed and posted
like any result. A shutdown pauses a training; the next start resumes it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
from pathlib import Path

from bot.generation.handler import INPUT_GONE, UNREADABLE, GenerationHandler
from bot.generation.options import training_as_shown
from bot.jobs.contracts import JobRefused, Requester, Reviewer, StoredImage
from bot.jobs.inputs import InputStore, MissingInput
from bot.jobs.kinds import JobKind, JobLife, Post, Unrestorable, Work
from bot.jobs.queue import QueuedJob
from bot.training.folders import TrainingFolders
from bot.training.outcomes import Sample, TrainedOutcome, TrainingObserver
from data.jobs import Job, JobImage, JobRepository
from data.loras import DuplicateName, Lora, LoraRepository
from engine.api.errors import EngineError, JobCancelled
from engine.api.jobs import TrainingJob, TrainingOutcome
from engine.api.lora_files import a1111_copy
from engine.api.params import GeneratedImage, GenerationParams
from engine.api.port import EnginePort
from engine.api.training_params import NAME_MAX, TrainingParams, training_price_units

log = logging.getLogger(__name__)


class TrainingHandler:
    kind = JobKind.TRAIN
    pauses_on_shutdown = True  # training runs for an hour: resumed from its checkpoint

    def __init__(
        self,
        folders: TrainingFolders,
        images_dir: Path,
        jobs: JobRepository,
        loras: LoraRepository,
        inputs: InputStore,
        engine: EnginePort,
        reviewer: Reviewer,
        results: GenerationHandler,
    ) -> None:
        self.folders = folders
        self.images_dir = images_dir
        self.jobs = jobs
        self.loras = loras
        self.inputs = inputs
        self.engine = engine
        self.reviewer = reviewer
        self.results = results  # reads stored images back as generation results are

    # -- what the scheduler asks of every kind ------------------------------------------

    async def restore(self, job: Job) -> Work:
        try:
            params = TrainingParams.from_dict(job.params)
        except TypeError:
            raise Unrestorable(UNREADABLE) from None
        return self.work(job, params, await self.input_images(params))

    def work(self, job: Job, params: TrainingParams, inputs: dict[str, bytes]) -> TrainingJob:
        return TrainingJob(
            job.id,
            params,
            str(self.folders.workdir(job.id)),
            str(self.folders.class_dir(params)) if params.prior_preservation else None,
            inputs=inputs,
        )

    async def input_images(self, params: TrainingParams) -> dict[str, bytes]:
        keys = list(params.image_keys)
        try:
            values = await asyncio.to_thread(lambda: [self.inputs.get(key) for key in keys])
        except MissingInput:
            raise Unrestorable(INPUT_GONE) from None
        return dict(zip(keys, values, strict=True))

    def units(self, work: Work) -> float:
        assert isinstance(work, TrainingJob)
        return training_price_units(work.params)

    def shown(self, work: Work) -> GenerationParams:
        assert isinstance(work, TrainingJob)
        return training_as_shown(work.params)

    async def discard(self, job_id: int) -> None:
        """Its checkpoints (from a paused run) go."""
        await asyncio.to_thread(shutil.rmtree, self.folders.workdir(job_id), True)

    # -- running ------------------------------------------------------------------------

    async def run(self, batch: list[QueuedJob], life: JobLife) -> None:
        [entry] = batch  # a training never shares a batch (its batch key is its own)
        work = entry.engine_job
        assert isinstance(work, TrainingJob)
        try:
            outcome = await life.idle(
                self.engine.train(work), reason="the engine thread is training"
            )
        except JobCancelled:
            life.stop_running(entry)
            if life.paused(entry.job_id):
                # A clean shutdown, not the member's cancel: back in line for the next start,
                # resuming from its last checkpoint.
                await self.jobs.put_back(entry.job_id)
                log.info(
                    "job=%s training paused for shutdown; it resumes at the next start",
                    entry.job_id,
                )
                return
            await life.fail(entry, "Cancelled.", cancelled=True)
            await self.discard(entry.job_id)
            return
        except EngineError as error:
            life.stop_running(entry)
            await life.fail(entry, error.user_message)
            await self.discard(entry.job_id)
            return
        life.stop_running(entry)
        await self._finish(entry, outcome, life)

    async def _finish(self, entry: QueuedJob, outcome: TrainingOutcome, life: JobLife) -> None:
        job = await self.jobs.get(entry.job_id)
        assert job is not None
        params = TrainingParams.from_dict(job.params)
        target = self.folders.lora_path(job.user_id, job.id, params.name)
        samples = await asyncio.to_thread(self._keep_files, job.id, outcome, target)
        # A crash between registering the file and completing the job: the rerun finds its
        # row instead of adding a second one.
        lora = await self.loras.by_job(job.id) or await self._register(job, params, target, outcome)
        images = [
            JobImage(job.id, idx, image.seed, str(path), image.width, image.height, image.infotext)
            for idx, (image, path) in enumerate(samples)
        ]
        if not await self.jobs.complete(job.id, images):
            return
        await self.discard(job.id)
        log.info(
            "job=%s kind=train user=%s ran=%.1fs outcome=succeeded lora=%s",
            job.id,
            job.user_id,
            outcome.result.seconds,
            lora.name,
        )
        shown = await self._reviewed_samples(job.id, samples, life.take_requester(job.id))
        trained = TrainedOutcome(
            job,
            params,
            lora,
            shown,
            outcome.result.seconds,
            outcome.result.final_loss,
            outcome.result.resumed_from,
        )
        # Posted as generation results are: retried while Discord fails, then remembered.
        life.deliver(job.id, post_trained(trained))

    async def _reviewed_samples(
        self, job_id: int, samples: list[tuple[GeneratedImage, Path]], requester: Requester
    ) -> list[Sample]:
        """The samples as they may be posted: through the same safety review as any result
        (blurred or left out per the server's policy); none when it withholds them."""
        stored = [
            StoredImage(image.seed, path, image.width, image.height, image.infotext, image.png)
            for image, path in samples
        ]
        try:
            stored = await self.reviewer.review(job_id, stored, requester)
        except JobRefused as withheld:
            log.info("job=%s samples withheld: %s", job_id, withheld)
            return []
        return [Sample(image.png, image.infotext, image.spoiler) for image in stored]

    async def _register(
        self, job: Job, params: TrainingParams, target: Path, outcome: TrainingOutcome
    ) -> Lora:
        # The name may have been taken while it trained: then both are kept, this one as
        # name-<job>.
        suffix = f"-{job.id}"
        for name in (params.name, params.name[: NAME_MAX - len(suffix)] + suffix):
            try:
                return await self.loras.add(
                    owner_id=job.user_id,
                    guild_id=job.guild_id,
                    name=name,
                    method=params.method,
                    token=params.token,
                    class_word=params.class_word,
                    base_model=params.model,
                    path=str(target),
                    job_id=job.id,
                    metadata=outcome.result.metadata,
                )
            except DuplicateName:
                continue
        raise JobRefused(f"You already have a LoRA called {params.name}.")

    def _keep_files(
        self, job_id: int, outcome: TrainingOutcome, target: Path
    ) -> list[tuple[GeneratedImage, Path]]:
        target.parent.mkdir(parents=True, exist_ok=True)
        copy = a1111_copy(Path(outcome.result.path))
        if copy.is_file():  # the file A1111 loads, sent to the member; before ours, as written
            _copy_atomically(copy, a1111_copy(target))
        _copy_atomically(Path(outcome.result.path), target)
        folder = self.images_dir / str(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        kept = []
        for idx, image in enumerate(outcome.samples):
            path = folder / f"{idx}-{image.seed}.png"
            path.write_bytes(image.png)
            kept.append((image, path))
        return kept

    # -- a finished training, announced again -------------------------------------------

    async def redelivery(self, job: Job) -> Post | None:
        """The training a previous run finished but never announced (it died between the
        two): its samples, with the safety review's decisions applied again."""
        lora = await self.loras.by_job(job.id)
        if lora is None:
            return None
        try:
            images = await self.results.stored_images(job)
        except OSError as error:
            log.warning("job=%s samples unreadable (%s); announced without", job.id, error)
            images = []
        samples = [Sample(image.png, image.infotext, image.spoiler) for image in images]
        ran = (job.finished_at or job.created_at) - (job.started_at or job.created_at)
        params = TrainingParams.from_dict(job.params)
        return post_trained(TrainedOutcome(job, params, lora, samples, ran, math.nan, 0))


def _copy_atomically(source: Path, target: Path) -> None:
    partial = target.with_name(target.name + ".part")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def post_trained(outcome: TrainedOutcome) -> Post:
    async def post(observer: TrainingObserver) -> int | None:
        return await observer.trained(outcome)

    return post

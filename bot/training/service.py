"""/train as a service: requests checked and priced, jobs queued with everyone else's, and
the results registered as LoRAs (or embeddings) their owners can use in /dream.

A training job is a row like any other (kind `train`), charged when accepted and queued
fairly; it has the engine thread to itself while it runs. Its checkpoints live in
DATA_DIR/training/<job>/, so a restart resumes it from the last one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from bot.community.policy import CommunityPolicy, check_banned_words
from bot.generation.options import random_seed, training_as_shown
from bot.generation.service import DreamService
from bot.jobs.contracts import JobRefused, Requester, StoredImage, Ticket
from bot.jobs.queue import QueuedJob
from bot.training.loras import LoraLibrary
from data.credits import CreditPolicy, InsufficientCredits
from data.jobs import (
    DuplicateAction,
    DuplicateInteraction,
    Job,
    JobImage,
    JobStatus,
    Origin,
    QueueCaps,
    QueueFull,
)
from data.loras import DuplicateName, Lora, LoraRepository
from engine.api.errors import EngineError, JobCancelled
from engine.api.jobs import TrainingJob, TrainingOutcome
from engine.api.params import GeneratedImage, InvalidParams
from engine.api.training_params import (
    NAME_MAX,
    TrainingLimits,
    TrainingParams,
    TrainingProgress,
    check_training,
    make_training_params,
    sanitize_name,
    training_price_units,
    with_images,
)
from engine.imaging.training_images import collect_training_images

log = logging.getLogger(__name__)

TRAIN = "train"
_SAFE_PART = re.compile(r"[^a-z0-9_-]")


class TrainingObserver(Protocol):
    def progress(self, job_id: int, progress: TrainingProgress) -> None: ...

    async def trained(self, outcome: TrainedOutcome) -> int | None: ...

    async def failed(self, job: Job, message: str, refunded: int) -> None: ...


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


class TrainingService:
    def __init__(
        self,
        dreams: DreamService,
        loras: LoraRepository,
        community: CommunityPolicy | None = None,
    ) -> None:
        self.dreams = dreams
        self.loras = loras
        self.community = community
        self.settings = dreams.settings
        self.limits = TrainingLimits(
            max_steps=self.settings.train_max_steps,
            max_rank=self.settings.train_max_rank,
            max_images=self.settings.train_max_images,
            # The resolution comes from the owner's model settings, never from a member.
            min_resolution=64,
        )
        # Who hears about a training job restored after a restart (set by the /train cog).
        self.fallback_observer: Callable[[Job], TrainingObserver] | None = None
        # Who asked where, for the safety review of the samples (not kept across restarts: a
        # restored job's samples are reviewed as for an ordinary channel).
        self._requesters: dict[int, Requester] = {}
        self.library = LoraLibrary(dreams.models, loras)
        dreams.trainer = self
        dreams.adapters = self.library

    # -- folders ------------------------------------------------------------------------

    def workdir(self, job_id: int) -> Path:
        return self.settings.data_dir / "training" / str(job_id)

    def class_dir(self, params: TrainingParams) -> Path:
        # Model names come from the owner's settings, class words from members: both are
        # reduced to safe characters, so no path is built from what a member typed.
        model = _SAFE_PART.sub("_", params.model.lower())
        word = _SAFE_PART.sub("_", params.class_word.lower()) or "none"
        return self.settings.data_dir / "class-images" / model / word

    def lora_path(self, owner_id: int, job_id: int, name: str) -> Path:
        return (
            self.settings.data_dir
            / "loras"
            / str(owner_id)
            / f"{sanitize_name(name)}-{job_id}.safetensors"
        )

    # -- accepting a request ------------------------------------------------------------

    async def prepare(
        self,
        files: list[tuple[str, bytes]],
        *,
        name: str,
        user_id: int,
        model: str | None = None,
        class_word: str = "",
        method: str = "lora",
        steps: int | None = None,
        rank: int | None = None,
        learning_rate: float | None = None,
        prior_preservation: bool = False,
    ) -> tuple[TrainingParams, str]:
        """Check the images and options; returns the parameters and a note on skipped files.

        InvalidParams or JobRefused say what is wrong; nothing is stored until then.
        """
        model = model or self.settings.default_model
        spec = self.dreams.models.get(model)
        if spec is None:
            raise InvalidParams(
                f"Unknown model {model!r}. Models: {', '.join(sorted(self.dreams.models))}."
            )
        family = spec.guessed_family()
        # Trained at the model's own size (square, in multiples of 64 as the UNet needs).
        resolution = max(64, min(spec.size_default()) // 64 * 64)
        params = make_training_params(
            name=name,
            model=model,
            resolution=resolution,
            seed=random_seed(),
            method=method,
            class_word=class_word,
            steps=steps,
            rank=rank,
            learning_rate=learning_rate,
            prior_preservation=prior_preservation,
            checkpoint_every=self.settings.train_checkpoint_every,
        )
        check_training(params, self.limits, family)
        await self._check_name_free(user_id, params.name)
        collected = await asyncio.to_thread(
            collect_training_images,
            files,
            resolution=params.resolution,
            max_images=self.limits.max_images,
            min_images=self.limits.min_images,
            max_pixels=self.settings.max_attachment_pixels,
            max_zip_bytes=self.settings.max_attachment_bytes,
        )
        keys = [await self.dreams.inputs.put_async(png) for png in collected.images]
        note = " ".join(collected.skipped)
        return with_images(params, keys), note

    async def _check_name_free(self, user_id: int, name: str) -> None:
        if await self.loras.owned(user_id, name) is not None:
            raise JobRefused(
                f"You already have a LoRA called {name}; pick another name or delete it."
            )
        for job in await self.dreams.jobs.pending_for(user_id):
            if job.kind == TRAIN and job.params.get("name") == name:
                raise JobRefused(f"You are already training {name} (job {job.id}).")

    def price(self, params: TrainingParams, per_image: float | None = None) -> int:
        """Credits for a training job: per step, in standard images, at `per_image` credits
        each (the bot's own price by default); rounded up, as generation is."""
        missing = 0
        if params.prior_preservation:
            cached = self.class_dir(params)
            have = len(list(cached.glob("*.png"))) if cached.exists() else 0
            missing = max(0, params.class_images - have)
        units = training_price_units(params, class_images_missing=missing)
        price = self.settings.price_per_image if per_image is None else per_image
        return max(1, math.ceil(units * price - 1e-9))

    async def submit(
        self,
        params: TrainingParams,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        interaction_id: int | None,
        observer: TrainingObserver,
        requester: Requester | None = None,
    ) -> Ticket:
        """Charge and record the job, then queue it; JobRefused says why not.

        The server's rules for members (blocklist, channels, allowed models) apply as they
        do to generation.
        """
        requester = requester or Requester()
        cost, caps, credit_policy = await self._terms(
            params, user_id, guild_id, channel_id, requester
        )
        await self._check_name_free(user_id, params.name)
        try:
            job = await self.dreams.jobs.create(
                kind=TRAIN,
                user_id=user_id,
                guild_id=guild_id,
                channel_id=channel_id,
                interaction_id=interaction_id,
                params=params.to_dict(),
                cost=cost,
                caps=caps,
                # One pending training per member and name, checked in the same transaction
                # as the charge: a retried /train cannot pay twice.
                origin=Origin(None, TRAIN, f"{TRAIN}:{params.name}"),
                credit_policy=credit_policy,
            )
        except DuplicateInteraction as duplicate:
            return Ticket(duplicate.job, training_as_shown(params), 0, duplicate=True)
        except DuplicateAction as pending:
            raise JobRefused(
                f"You are already training {params.name} (job {pending.job.id})."
            ) from None
        except (QueueFull, InsufficientCredits) as refused:
            raise JobRefused(str(refused)) from None
        self._requesters[job.id] = requester
        position = self._enqueue(job, params, observer, await self._inputs(params))
        balance = await self.dreams.credits.balance(user_id)
        log.info(
            "job=%s kind=train user=%s cost=%s queued position=%s",
            job.id,
            user_id,
            job.cost,
            position,
        )
        return Ticket(job, training_as_shown(params), position, balance)

    async def _terms(
        self,
        params: TrainingParams,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        requester: Requester,
    ) -> tuple[int, QueueCaps, CreditPolicy | None]:
        """Price, caps and top-up as this server sets them for this member (its price, their
        roles), after its rules: blocklist, channels, allowed models, and its banned words
        for the name and class word (posted in public and written into sample prompts)."""
        community = self.community
        if community is None:
            return self.price(params), self.dreams.caps, None
        policy = await community.admit_member(
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            requester=requester,
            model=params.model,
        )
        check_banned_words(policy, params.name.replace("-", " "), params.class_word)
        limits = await community.limits(guild_id, requester)
        cost = self.price(params, policy.price_per_image * limits.price_factor)
        caps = QueueCaps(limits.max_pending, self.settings.max_queued_total)
        return cost, caps, community.credit_policy(policy)

    async def _inputs(self, params: TrainingParams) -> dict[str, bytes]:
        keys = list(params.image_keys)
        values = await asyncio.to_thread(lambda: [self.dreams.inputs.get(key) for key in keys])
        return dict(zip(keys, values, strict=True))

    def _enqueue(
        self,
        job: Job,
        params: TrainingParams,
        observer: TrainingObserver | None,
        inputs: dict[str, bytes],
    ) -> int:
        work = TrainingJob(
            job.id,
            params,
            str(self.workdir(job.id)),
            str(self.class_dir(params)) if params.prior_preservation else None,
            report=lambda progress: self.dreams.report_progress(job.id, progress),
            inputs=inputs,
        )
        return self.dreams.enqueue_work(job, work, observer)

    async def discard(self, job_id: int) -> None:
        await asyncio.to_thread(shutil.rmtree, self.workdir(job_id), True)

    async def restore(self, job: Job) -> None:
        """Back in the queue after a restart (raises MissingInput when its images are gone);
        progress is then shown by the fallback the Discord layer set."""
        params = TrainingParams.from_dict(job.params)
        observer = self.fallback_observer(job) if self.fallback_observer else None
        self._enqueue(job, params, observer, await self._inputs(params))

    # -- running ------------------------------------------------------------------------

    async def run(self, entry: QueuedJob) -> None:
        work = entry.engine_job
        assert isinstance(work, TrainingJob)
        try:
            outcome = await self.dreams.idle_wait(
                self.dreams.engine.train(work), reason="the engine thread is training"
            )
        except JobCancelled:
            self.dreams.stop_running(entry)
            if entry.job_id in self.dreams.paused:
                # A clean shutdown, not the member's cancel: back in line for the next start,
                # resuming from its last checkpoint.
                await self.dreams.jobs.put_back(entry.job_id)
                log.info(
                    "job=%s training paused for shutdown; it resumes at the next start",
                    entry.job_id,
                )
                return
            await self.dreams.fail(entry, "Cancelled.", JobStatus.CANCELLED)
            await asyncio.to_thread(shutil.rmtree, self.workdir(entry.job_id), True)
            return
        except EngineError as error:
            self.dreams.stop_running(entry)
            await self.dreams.fail(entry, error.user_message)
            await asyncio.to_thread(shutil.rmtree, self.workdir(entry.job_id), True)
            return
        self.dreams.stop_running(entry)
        await self._finish(entry, outcome)

    async def _finish(self, entry: QueuedJob, outcome: TrainingOutcome) -> None:
        job = await self.dreams.jobs.get(entry.job_id)
        assert job is not None
        params = TrainingParams.from_dict(job.params)
        target = self.lora_path(job.user_id, job.id, params.name)
        samples = await asyncio.to_thread(self._keep_files, job.id, outcome, target)
        # A crash between registering the file and completing the job: the rerun finds its
        # row instead of adding a second one.
        lora = await self.loras.by_job(job.id) or await self._register(job, params, target, outcome)
        images = [
            JobImage(job.id, idx, image.seed, str(path), image.width, image.height, image.infotext)
            for idx, (image, path) in enumerate(samples)
        ]
        if not await self.dreams.jobs.complete(job.id, images):
            return
        await asyncio.to_thread(shutil.rmtree, self.workdir(job.id), True)
        log.info(
            "job=%s kind=train user=%s ran=%.1fs outcome=succeeded lora=%s",
            job.id,
            job.user_id,
            outcome.result.seconds,
            lora.name,
        )
        shown = await self._reviewed_samples(job.id, samples)
        trained = TrainedOutcome(
            job,
            params,
            lora,
            shown,
            outcome.result.seconds,
            outcome.result.final_loss,
            outcome.result.resumed_from,
        )
        observer = self.dreams.take_observer(job.id)
        if observer is not None:
            # Posted as generation results are: retried while Discord fails, then remembered.
            self.dreams.spawn(self.dreams.post_result(job.id, lambda: observer.trained(trained)))

    async def redeliver(self) -> list[Job]:
        """Post the trainings a previous run finished but never announced (it died between
        the two): their samples, with the safety review's decisions applied again."""
        pending = [
            job
            for job in await self.dreams.jobs.undelivered()
            if job.kind == TRAIN and job.status is JobStatus.SUCCEEDED
        ]
        for job in pending:
            observer = self.fallback_observer(job) if self.fallback_observer else None
            lora = await self.loras.by_job(job.id)
            if observer is None or lora is None:
                continue
            try:
                images = await self.dreams.stored_images(job)
            except OSError as error:
                log.warning("job=%s samples unreadable (%s); announced without", job.id, error)
                images = []
            samples = [Sample(image.png, image.infotext, image.spoiler) for image in images]
            ran = (job.finished_at or job.created_at) - (job.started_at or job.created_at)
            trained = TrainedOutcome(
                job, TrainingParams.from_dict(job.params), lora, samples, ran, math.nan, 0
            )
            log.info("job=%s training announced after a restart", job.id)
            self.dreams.spawn(self.dreams.post_result(job.id, partial(observer.trained, trained)))
        return pending

    async def _reviewed_samples(
        self, job_id: int, samples: list[tuple[GeneratedImage, Path]]
    ) -> list[Sample]:
        """The samples as they may be posted: through the same safety review as any result
        (blurred or left out per the server's policy); none when it withholds them."""
        requester = self._requesters.pop(job_id, Requester())
        stored = [
            StoredImage(image.seed, path, image.width, image.height, image.infotext, image.png)
            for image, path in samples
        ]
        reviewer = self.dreams.reviewer
        if reviewer is not None:
            try:
                stored = await reviewer.review(job_id, stored, requester)
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
        shutil.copyfile(outcome.result.path, target.with_suffix(".part"))
        os.replace(target.with_suffix(".part"), target)
        folder = self.settings.images_dir / str(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        kept = []
        for idx, image in enumerate(outcome.samples):
            path = folder / f"{idx}-{image.seed}.png"
            path.write_bytes(image.png)
            kept.append((image, path))
        return kept

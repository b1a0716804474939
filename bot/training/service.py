"""/train as a service: requests checked and priced, jobs queued with everyone else's, and
the results registered as LoRAs (or embeddings) their owners can use in /dream.

A training job is a row like any other (kind `train`), charged when accepted and queued
fairly; it has the engine thread to itself while it runs (bot/training/handler.py). Its
checkpoints live in DATA_DIR/training/<job>/, so a restart resumes it from the last one.
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path

from bot.community.policy import CommunityPolicy, check_banned_words
from bot.generation.options import TRAIN, random_seed, training_as_shown
from bot.jobs.contracts import JobRefused, Requester, Ticket
from bot.jobs.inputs import InputStore
from bot.jobs.kinds import Unrestorable
from bot.jobs.scheduler import Scheduler
from bot.settings import Settings
from bot.training.folders import TrainingFolders
from bot.training.handler import TrainingHandler
from bot.training.loras import LoraLibrary
from bot.training.outcomes import TrainingObserver
from data.credits import CreditPolicy, CreditRepository, InsufficientCredits
from data.jobs import (
    DuplicateAction,
    DuplicateInteraction,
    JobRepository,
    Origin,
    QueueCaps,
    QueueFull,
)
from data.loras import LoraRepository
from engine.api.params import InvalidParams
from engine.api.specs import ModelSpec
from engine.api.training_params import (
    TrainingLimits,
    TrainingParams,
    check_training,
    make_training_params,
    training_price_units,
    with_images,
)
from engine.imaging.training_images import collect_training_images

log = logging.getLogger(__name__)


class TrainingService:
    def __init__(
        self,
        settings: Settings,
        jobs: JobRepository,
        credits: CreditRepository,
        inputs: InputStore,
        scheduler: Scheduler,
        handler: TrainingHandler,
        loras: LoraRepository,
        library: LoraLibrary,
        *,
        community: CommunityPolicy | None,
    ) -> None:
        """`community`: a server's rules for members (None: the bot's prices, no rules)."""
        self.settings = settings
        self.models: dict[str, ModelSpec] = settings.model_specs()
        self.jobs = jobs
        self.credits = credits
        self.inputs = inputs
        self.scheduler = scheduler
        self.handler = handler
        self.loras = loras
        self.library = library
        self.community = community
        self.folders = TrainingFolders(settings.data_dir)
        self.caps = QueueCaps(settings.max_pending_per_member, settings.max_queued_total)
        self.limits = TrainingLimits(
            max_steps=settings.train_max_steps,
            max_rank=settings.train_max_rank,
            max_images=settings.train_max_images,
            # The resolution comes from the owner's model settings, never from a member.
            min_resolution=64,
        )

    def workdir(self, job_id: int) -> Path:
        return self.folders.workdir(job_id)

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
        spec = self.models.get(model)
        if spec is None:
            raise InvalidParams(
                f"Unknown model {model!r}. Models: {', '.join(sorted(self.models))}."
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
        keys = [await self.inputs.put_async(png) for png in collected.images]
        note = " ".join(collected.skipped)
        return with_images(params, keys), note

    async def _check_name_free(self, user_id: int, name: str) -> None:
        if await self.loras.owned(user_id, name) is not None:
            raise JobRefused(
                f"You already have a LoRA called {name}; pick another name or delete it."
            )
        for job in await self.jobs.pending_for(user_id):
            if job.kind == TRAIN and job.params.get("name") == name:
                raise JobRefused(f"You are already training {name} (job {job.id}).")

    def price(self, params: TrainingParams, per_image: float | None = None) -> int:
        """Credits for a training job: per step, in standard images, at `per_image` credits
        each (the bot's own price by default); rounded up, as generation is."""
        missing = 0
        if params.prior_preservation:
            cached = self.folders.class_dir(params)
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
            inputs = await self.handler.input_images(params)
        except Unrestorable as gone:  # its images went between prepare and submit
            raise JobRefused(str(gone)) from None
        try:
            job = await self.jobs.create(
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
        work = self.handler.work(job, params, inputs)
        position = self.scheduler.enqueue(job, work, observer, requester)
        balance = await self.credits.balance(user_id)
        log.info(
            "job=%s kind=train user=%s cost=%s queued position=%s",
            job.id,
            user_id,
            job.cost,
            position,
        )
        paused = self.scheduler.waits.paused
        return Ticket(job, training_as_shown(params), position, balance, paused=paused)

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
            return self.price(params), self.caps, None
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

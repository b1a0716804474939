"""Image jobs accepted: a member's options into checked parameters, priced, admitted by the
server's rules, charged and recorded in one transaction, then queued with the scheduler.

Cogs call it with plain values and hear back through a `JobObserver`; the console uses the
same service without Discord. Running the jobs is bot/generation/handler.py's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

from bot.generation.handler import GenerationHandler
from bot.generation.options import (
    HONOURED_KEYS,
    Checked,
    DreamOptions,
    job_kind,
    price_units,
    resolve_options,
)
from bot.jobs.contracts import (
    AdapterResolver,
    Admission,
    Gate,
    JobObserver,
    JobRefused,
    Requester,
    Ticket,
)
from bot.jobs.kinds import Unrestorable
from bot.jobs.scheduler import Scheduler
from bot.settings import Settings
from data.credits import CreditRepository, InsufficientCredits
from data.jobs import (
    DuplicateAction,
    DuplicateInteraction,
    JobRepository,
    Origin,
    QueueCaps,
    QueueFull,
)
from engine.api.checks import check_params
from engine.api.hires import has_hires_keys
from engine.api.image_prompts import INFOTEXT_KEYS, infotext_image_count
from engine.api.infotext import configured_model, params_from_infotext, parse_infotext
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams, InvalidParams
from engine.api.samplers import DEFAULT_SAMPLER, SAMPLERS
from engine.api.specs import ModelSpec

log = logging.getLogger(__name__)


class DreamService:
    def __init__(
        self,
        settings: Settings,
        jobs: JobRepository,
        credits: CreditRepository,
        scheduler: Scheduler,
        handler: GenerationHandler,
        *,
        gate: Gate | None,
        adapters: AdapterResolver | None,
    ) -> None:
        """`gate`: a server's rules (bot/community/policy.py); None admits every job at the
        bot's prices. `adapters`: finds the LoRA and embedding files prompts name
        (bot/training/loras.py); None leaves <lora:...> tags unresolved."""
        self.settings = settings
        self.models: dict[str, ModelSpec] = settings.model_specs()
        self.jobs = jobs
        self.credits = credits
        self.scheduler = scheduler
        self.handler = handler
        self.gate = gate
        self.adapters = adapters
        self.caps = QueueCaps(settings.max_pending_per_member, settings.max_queued_total)

    # -- parameters ---------------------------------------------------------------------

    def build_params(self, options: DreamOptions, **mode_fields: Any) -> Checked:
        """Fill the defaults and check everything; InvalidParams names what is wrong.

        `mode_fields` set the image-conditioned modes' parameters (bot/generation/imaging.py).
        """
        return resolve_options(
            options,
            self.models,
            self.settings.default_model,
            self.settings.max_prompt_length,
            self.settings.prompt_syntax,
            mode_fields,
            self.settings.max_upscale_pixels,
        )

    def check(self, params: GenerationParams) -> Checked:
        """The one check of a job's parameters: InvalidParams naming the first value this bot
        cannot run. What passes is `Checked`, the only parameters `submit` takes."""
        check_params(
            params,
            self.models,
            self.settings.max_prompt_length,
            self.settings.max_upscale_pixels,
        )
        return Checked(params)

    def price(self, params: GenerationParams) -> int:
        """Credits for a job: proportional to pixels x steps x images, times what a step of
        its model's family costs (engine/api/families.py), never below 1."""
        units = price_units(params, self.models.get(params.model))
        return max(1, math.ceil(units * self.settings.price_per_image - 1e-9))

    def reproduce_params(self, infotext: str) -> tuple[Checked, list[str]]:
        """Parameters to re-run an image from its infotext here, and what could not be honoured.

        A model or sampler this bot does not have is replaced by the default and said so;
        settings of A1111 features this bot does not run (other upscalers, LoRAs...) are listed.
        """
        parsed = params_from_infotext(infotext)
        notes = []
        # `Model` is the checkpoint's name (A1111's); ours, or an older infotext's, is a name.
        model = configured_model(parsed.model, self.models)
        if model is None:
            model = self.settings.default_model
            notes.append(f"Model {parsed.model or '(not named)'} is not on this bot; used {model}.")
        sampler = parsed.sampler
        if sampler not in SAMPLERS:
            sampler = DEFAULT_SAMPLER
            notes.append(f"Sampler {parsed.sampler} is not available; used {sampler}.")
        hires_sampler = parsed.hires_sampler
        if hires_sampler is not None and hires_sampler not in SAMPLERS:
            hires_sampler = None
            notes.append(f"Hires sampler {parsed.hires_sampler} is not available; used {sampler}.")
        values = parse_infotext(infotext).values
        honoured = set(HONOURED_KEYS)
        if has_hires_keys(values):
            honoured.add("Denoising strength")  # the hires pass's, which a paste runs
        pictures = infotext_image_count(values)
        if pictures:  # as img2img's picture, an image prompt's is not in the infotext
            honoured |= INFOTEXT_KEYS
            which = f"{pictures} image prompt{'s are' if pictures > 1 else ' is'}"
            if not parsed.prompt.strip():  # a /blend: its pictures were the whole prompt
                raise InvalidParams(
                    f"Its {which} not in the infotext and it has no text: /blend the pictures."
                )
            notes.append(f"Its {which} not in the infotext: made from the text alone.")
        ignored = [key for key in values if key not in honoured]
        ours = "CPU" if self.settings.noise == "cpu" else "GPU"
        if values.get("RNG", "GPU") != ours:
            notes.append(f"Noise is drawn on the {ours} here, not the {values.get('RNG', 'GPU')}.")
        if "Image CFG scale" in values:  # an /edit's, or A1111's instruct-pix2pix job
            notes.append(
                "The picture it edited is not in its parameters: the instruction ran as a "
                "prompt (use /edit with that picture to edit it again)."
            )
        if ignored:
            notes.append(f"Not reproduced: {', '.join(ignored)}.")
        # <lora:name:w> tags stay in the prompt: submit finds those this member may use by
        # name and refuses the others, so a hash from another install is not checked here.
        parsed = replace(parsed, model=model, sampler=sampler, hires_sampler=hires_sampler)
        return self.check(replace(parsed, count=1)), notes

    # -- accepting a job ----------------------------------------------------------------

    async def submit(
        self,
        params: Checked,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        interaction_id: int | None,
        observer: JobObserver,
        origin: Origin | None = None,
        requester: Requester | None = None,
        private: bool = False,
        free: bool = False,
    ) -> Ticket:
        """Charge and record the job in one transaction, then queue it.

        `private`: the result goes to the member's DMs, so only they may see it or use its
        buttons (bot.generation.results checks it on every click). `free`: a job that costs
        nothing (a mask preview), under the server's rules and caps all the same.

        Raises JobRefused (the server's rules, caps, credits) having changed nothing. A
        retried interaction gets its existing job back, charged once; so does a second click
        of an action whose first job is still pending (`origin`).
        """
        requester = requester or Requester()
        admission = await self._admit(
            params, user_id, guild_id, channel_id, interaction_id, requester
        )
        admitted = admission.params
        if self.adapters is not None:
            # <lora:name:w> tags and embedding tokens, among the files this member may use;
            # after the server's rules, which may have taken words out of the prompt.
            resolved = await self.adapters.resolve(admitted, user_id=user_id, guild_id=guild_id)
            if resolved != admitted:  # what the tags named may not suit the model (FLUX)
                self.check(resolved)
            admitted = resolved
        params = Checked(admitted)
        try:
            inputs = await self.handler.input_images(params)
        except Unrestorable as gone:  # a reroll of a result whose input file was removed
            raise JobRefused(str(gone)) from None
        kind = job_kind(params)
        try:
            job = await self.jobs.create(
                kind=kind,
                user_id=user_id,
                guild_id=guild_id,
                channel_id=channel_id,
                interaction_id=interaction_id,
                params=params.to_dict(),
                cost=0 if free else admission.cost,
                caps=admission.caps,
                origin=origin,
                credit_policy=admission.credit_policy,
                private=private,
            )
        except (DuplicateInteraction, DuplicateAction) as duplicate:
            existing = duplicate.job
            return Ticket(
                existing,
                GenerationParams.from_dict(existing.params),
                self.scheduler.queue.position(existing.id),
                duplicate=True,
            )
        except (QueueFull, InsufficientCredits) as refused:
            raise JobRefused(str(refused)) from None
        work = EngineJob(job.id, params, inputs=inputs)
        position = self.scheduler.enqueue(job, work, observer, requester)
        balance = await self.credits.balance(user_id)
        log.info(
            "job=%s kind=%s user=%s cost=%s queued position=%s",
            job.id,
            kind,
            user_id,
            job.cost,
            position,
        )
        paused = self.scheduler.waits.paused
        return Ticket(job, params, position, balance, note=admission.note, paused=paused)

    async def _admit(
        self,
        params: Checked,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        interaction_id: int | None,
        requester: Requester,
    ) -> Admission:
        if self.gate is None:
            return Admission(params, self.price(params), self.caps)
        admission = await self.gate.admit(
            params,
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            interaction_id=interaction_id,
            requester=requester,
        )
        if admission.params != params:  # the rules changed it (words moved to the negative)
            self.check(admission.params)
        return admission

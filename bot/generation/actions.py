"""What the buttons and reactions under a result do: each action is a new job.

Everything an action needs is read from the store by job id, so a button works after any
restart; who may press is checked on every click.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from dataclasses import replace
from enum import StrEnum

from bot.community.guilds import GuildSettingsService
from bot.generation.imaging import DEFAULT_OUTPAINT_DENOISE, from_image, store_init
from bot.generation.interpolation import rerolled
from bot.generation.options import random_seed
from bot.generation.regions import RegionEdits, RegionRequest
from bot.generation.results import Presser, Results
from bot.generation.service import DreamService
from bot.jobs.contracts import JobObserver, JobRefused, Ticket
from bot.jobs.inputs import InputStore
from bot.settings import Settings
from data.jobs import Job, JobImage, JobRepository, Origin
from engine.api.edits import (
    EDIT_DENOISE,
    FROM_NOISE_MODES,
    NO_INSTRUCTION,
    NOT_SET_UP,
    edit_model,
)
from engine.api.params import DEFAULT_IMAGE_CFG, GenerationParams, InvalidParams
from engine.imaging import attachments


class Action(StrEnum):
    REROLL = "reroll"
    VARY = "vary"
    STRONG = "strong"
    UPSCALE = "upscale"
    EDIT = "edit"
    # Midjourney's reframing under a single image: outpaints of the picture itself.
    ZOOM_OUT_2 = "zoom2"
    ZOOM_OUT_15 = "zoom15"
    ZOOM_CUSTOM = "zoom"  # a modal asks the factor and the prompt
    PAN_LEFT = "panleft"
    PAN_RIGHT = "panright"
    PAN_UP = "panup"
    PAN_DOWN = "pandown"
    SQUARE = "square"
    # Vary (Region): a modal asks what to change and where; the mask is seen first (a free
    # preview job whose Run starts the inpaint) when the member asks.
    REGION = "region"
    REGION_PREVIEW = "regionmask"
    REGION_RUN = "regionrun"
    # /edit from a result: a modal asks what to change, in words (engine/api/edits.py).
    INSTRUCT = "instruct"

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def needs_image(self) -> bool:
        kinds = (
            Action.VARY,
            Action.STRONG,
            Action.UPSCALE,
            Action.REGION,
            Action.REGION_PREVIEW,
            Action.INSTRUCT,
        )
        return self in kinds or self.reframes

    @property
    def reframes(self) -> bool:
        return self in _ZOOMS or self in _PANS or self in (Action.SQUARE, Action.ZOOM_CUSTOM)


_LABELS = {
    Action.REROLL: "Reroll",
    Action.VARY: "Variation",
    Action.STRONG: "Strong variation",
    Action.UPSCALE: "Upscale",
    Action.EDIT: "Edit",
    Action.ZOOM_OUT_2: "Zoom out 2x",
    Action.ZOOM_OUT_15: "Zoom out 1.5x",
    Action.ZOOM_CUSTOM: "Custom zoom",
    Action.PAN_LEFT: "Pan left",
    Action.PAN_RIGHT: "Pan right",
    Action.PAN_UP: "Pan up",
    Action.PAN_DOWN: "Pan down",
    Action.SQUARE: "Make square",
    Action.REGION: "Vary (Region)",
    Action.REGION_PREVIEW: "Mask preview",
    Action.REGION_RUN: "Vary (Region)",
    Action.INSTRUCT: "Change by words",
}
_ZOOMS = {Action.ZOOM_OUT_2: 2.0, Action.ZOOM_OUT_15: 1.5}
_TYPED = (Action.EDIT, Action.ZOOM_CUSTOM, Action.INSTRUCT)  # actions with a modal's text
_PANS = {
    Action.PAN_LEFT: "left",
    Action.PAN_RIGHT: "right",
    Action.PAN_UP: "up",
    Action.PAN_DOWN: "down",
}


class ResultActions(Results):
    """What the buttons and reactions under a result start: each a new job, checked once
    and submitted as any job is."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobRepository,
        guilds: GuildSettingsService,
        dreams: DreamService,
        inputs: InputStore,
    ) -> None:
        super().__init__(settings, jobs, guilds)
        self.dreams = dreams
        self.inputs = inputs
        self.regions = RegionEdits(settings, dreams, inputs)

    # -- actions that start a job -------------------------------------------------------

    async def start(
        self,
        action: Action,
        job_id: int,
        presser: Presser,
        observer: JobObserver,
        *,
        image: int | None = None,
        prompt: str | None = None,
        negative: str | None = None,
        zoom: str | None = None,
        region: RegionRequest | None = None,
        interaction_id: int | None = None,
    ) -> Ticket:
        """Check, build and submit the action's job; JobRefused or InvalidParams say why not.

        A second press of the same action while the first one's job is pending returns that
        job (`Ticket.duplicate`) and charges nothing.
        """
        job = await self.result(job_id, presser, use=True)
        asked = await self.params_for(
            action, job, image, prompt=prompt, negative=negative, zoom=zoom, region=region
        )
        params = self.dreams.check(asked)
        key = f"{action}:{job.id}" + (f":{image}" if image is not None else "")
        if action in _TYPED:  # what was typed tells two clicks apart (str hashes vary)
            digest = hashlib.sha256(f"{prompt}\0{negative}\0{zoom}".encode()).hexdigest()[:12]
            key += f":{digest}"
        if region is not None:
            key += f":{region.digest()}"
        guild_id, requester = presser.rules_for(job)
        return await self.dreams.submit(
            params,
            user_id=presser.user_id,
            guild_id=guild_id,
            channel_id=presser.channel_id,
            interaction_id=interaction_id,
            observer=observer,
            origin=Origin(job.id, action.value, key),
            requester=requester,
            # Pressed in a DM: the new result lands there, as private as the DM itself.
            private=job.private or presser.guild_id is None,
            free=params.mask_preview,  # a mask preview is free: only its Run is charged
        )

    async def params_for(
        self,
        action: Action,
        job: Job,
        image: int | None,
        *,
        prompt: str | None = None,
        negative: str | None = None,
        zoom: str | None = None,
        region: RegionRequest | None = None,
    ) -> GenerationParams:
        params = GenerationParams.from_dict(job.params)
        if action is Action.REGION_RUN:  # `job` is the preview; its picture is stored
            return self.regions.run_params(job)
        if action in (Action.REGION, Action.REGION_PREVIEW):  # checked before any image is read
            self.regions.check_available()
        if params.mode == "interpolate":  # an animation has no one picture to work from
            if action is not Action.REROLL:
                raise JobRefused(f"{action.label} is not for animations; Reroll makes a new one.")
            return rerolled(params)
        if action is Action.REROLL:
            variation = random_seed() if params.has_variation else params.variation_seed
            return replace(params, seed=random_seed(), variation_seed=variation)
        if action is Action.EDIT:
            return replace(
                params,
                prompt=(prompt if prompt is not None else params.prompt).strip(),
                negative=(negative if negative is not None else params.negative).strip(),
            )
        chosen = await self._image(job, image)
        if action is Action.VARY and params.mode not in FROM_NOISE_MODES:
            raise JobRefused(
                "Subtle variations are for text-to-image and edited results; try a strong one."
            )
        if action is Action.VARY:
            # A1111's variation seed: the image's own noise with a new seed's blended in.
            return replace(
                params,
                seed=chosen.seed,
                variation_seed=random_seed(),
                variation_strength=self.settings.variation_strength,
            )
        png = await self._image_bytes(job, chosen)
        if action is Action.INSTRUCT:
            return await self._instruct(params, png, prompt)
        if action is Action.STRONG:
            return await self._strong(params, png)
        if action in (Action.REGION, Action.REGION_PREVIEW):
            if region is None:
                raise InvalidParams("Say what to change and where.")
            asked = replace(region, preview=action is Action.REGION_PREVIEW)
            return await self.regions.params(params, png, asked)
        if action.reframes:
            factor = parse_zoom(zoom or "") if action is Action.ZOOM_CUSTOM else None
            reframed = await self._reframe(action, params, chosen, png, factor)
            if prompt is not None:  # Custom zoom's edited prompt
                reframed = replace(reframed, prompt=prompt.strip())
            return reframed
        return await self._upscale(params, chosen, png)

    async def _reframe(
        self,
        action: Action,
        params: GenerationParams,
        chosen: JobImage,
        png: bytes,
        factor: float | None = None,
    ) -> GenerationParams:
        """Zoom out, pan or make square: the picture shrunk into a larger canvas whose new
        border is outpainted, within the model's size (so a zoom keeps the resolution)."""
        spec = self.dreams.models[params.model]
        cap, multiple = spec.pixel_cap(), spec.family_row().size_multiple
        width, height = chosen.width, chosen.height
        if factor is not None or action in _ZOOMS:
            frame = attachments.zoom_out(width, height, factor or _ZOOMS[action], cap, multiple)
        elif action in _PANS:
            frame = attachments.pan(width, height, _PANS[action], cap, multiple)
        else:
            frame = attachments.make_square(width, height, cap, multiple)
        inner = await asyncio.to_thread(
            attachments.shrunk_png, png, frame.inner, max_pixels=self.settings.max_attachment_pixels
        )
        key = await self.inputs.put_async(inner)
        canvas_w, canvas_h = attachments.outpaint_size(*frame.inner, frame.pads, multiple)
        return replace(
            from_image(params, key),
            mode="outpaint",
            outpaint=attachments.outpaint_pads(*frame.inner, frame.pads, multiple),
            seed=random_seed(),
            count=1,
            denoise=DEFAULT_OUTPAINT_DENOISE,
            width=canvas_w,
            height=canvas_h,
        )

    async def _strong(self, params: GenerationParams, png: bytes) -> GenerationParams:
        """img2img from the image: composition loosely kept, details free to change."""
        spec = self.dreams.models[params.model]
        prepared, key = await store_init(
            self.inputs,
            png,
            max_pixels=self.settings.max_attachment_pixels,
            spec=spec,
        )
        return replace(
            from_image(params, key),
            mode="img2img",
            seed=random_seed(),
            denoise=self.settings.strong_variation_denoise,
            width=prepared.width,
            height=prepared.height,
        )

    async def _instruct(
        self, params: GenerationParams, png: bytes, instruction: str | None
    ) -> GenerationParams:
        """An /edit of the image by the member's words, on the model that can edit (the
        result's own when it can): a new seed, the image CFG scale's default."""
        model = edit_model(self.dreams.models, params.model, self.settings.default_model)
        if model is None:
            raise JobRefused(NOT_SET_UP)
        words = (instruction or "").strip()
        if not words:
            raise InvalidParams(NO_INSTRUCTION)
        prepared, key = await store_init(
            self.inputs,
            png,
            max_pixels=self.settings.max_attachment_pixels,
            spec=self.dreams.models[model],
        )
        return replace(
            from_image(params, key),
            mode="edit",
            model=model,
            prompt=words,
            negative="",
            seed=random_seed(),
            count=1,
            denoise=EDIT_DENOISE,
            image_cfg=DEFAULT_IMAGE_CFG,
            width=prepared.width,
            height=prepared.height,
            # What the result's prompt named is not the instruction's (an edit takes none).
            loras=(),
            embeddings=(),
            hires_scale=1.0,
        )

    async def _upscale(
        self, params: GenerationParams, chosen: JobImage, png: bytes
    ) -> GenerationParams:
        multiple = self.dreams.models[params.model].family_row().size_multiple
        width, height = attachments.upscale_size(
            chosen.width, chosen.height, self.settings.upscale_factor, multiple
        )
        key = await self.inputs.put_async(png)
        return replace(
            from_image(params, key),
            mode="upscale",
            seed=chosen.seed,
            count=1,
            denoise=self.settings.upscale_denoise,
            upscale=self.settings.upscale_factor,
            width=width,
            height=height,
        )

    def can_upscale(self, width: int, height: int) -> bool:
        """Whether a U button would make an image within the upscale limit."""
        target_w, target_h = attachments.upscale_size(width, height, self.settings.upscale_factor)
        return target_w * target_h <= self.settings.max_upscale_pixels


MIN_ZOOM, MAX_ZOOM = 1.0, 2.0


def parse_zoom(text: str) -> float:
    """A zoom factor as a member types it (`1.5`, `2x`); InvalidParams names the range."""
    cleaned = text.strip().lower().removesuffix("x").strip()
    try:
        value = float(cleaned)
    except ValueError:
        raise InvalidParams(
            f"Zoom {text.strip()[:20]!r} is not a number: write one above {MIN_ZOOM:g} and at "
            f"most {MAX_ZOOM:g}, like 1.5."
        ) from None
    if not (math.isfinite(value) and MIN_ZOOM < value <= MAX_ZOOM):
        raise InvalidParams(f"Zoom must be above {MIN_ZOOM:g} and at most {MAX_ZOOM:g}, like 1.5.")
    return value

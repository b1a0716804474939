"""Vary (Region) on the bot's side: what a member asked for in the modal into an inpaint job,
and the free mask preview that waits under its Run and Cancel buttons.

The job carries the region as words and a grid cell (engine/api/regions.py); the engine
makes the mask inside the job (engine/pipelines/segment.py). A preview is a job too, queued
fairly and restored after a restart like any other, whose image is the mask over the
picture; it costs nothing, and its Run starts the inpaint from its stored parameters,
charged then.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace

from bot.generation.imaging import DEFAULT_REGION_DENOISE, from_image, store_init
from bot.generation.options import random_seed
from bot.generation.service import DreamService
from bot.jobs.contracts import JobRefused
from bot.jobs.inputs import InputStore
from bot.settings import Settings
from data.jobs import Job
from engine.api.params import GenerationParams, InvalidParams
from engine.api.regions import NEITHER, NOT_SET_UP, RegionProblem, parse_cell

log = logging.getLogger(__name__)

NOT_A_PREVIEW = "That button belongs to no mask preview."


@dataclass(frozen=True, slots=True)
class RegionRequest:
    """The modal's answers as typed: the region's words and grid cell (either may be
    empty), the prompt for what goes there, and whether to see the mask first."""

    words: str
    cell: str
    prompt: str
    preview: bool = False

    def digest(self) -> str:
        """Tells two requests apart in an action key (str hashes change per process)."""
        text = f"{self.words}\0{self.cell}\0{self.prompt}\0{self.preview}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def region(self) -> tuple[str | None, str | None]:
        """(words, cell) as a job stores them; InvalidParams when neither says anything."""
        words = self.words.strip() or None
        try:
            cell = parse_cell(self.cell) if self.cell.strip() else None
        except RegionProblem as problem:
            raise InvalidParams(str(problem)) from None
        if words is None and cell is None:
            raise InvalidParams(NEITHER)
        return words, cell


class RegionEdits:
    def __init__(self, settings: Settings, dreams: DreamService, inputs: InputStore) -> None:
        self.settings = settings
        self.dreams = dreams
        self.inputs = inputs

    def check_available(self) -> None:
        """Refuse a region edit (before anything is asked or charged) without a segmenter."""
        if not self.settings.segmenter:
            raise JobRefused(NOT_SET_UP)

    async def params(
        self, params: GenerationParams, png: bytes, request: RegionRequest
    ) -> GenerationParams:
        """An inpaint of a result's picture (`png`) where the request's region is, with its
        prompt; a preview of that mask when the member asked to see it first."""
        words, cell = request.region()
        spec = self.dreams.models.get(params.model)
        if spec is None:
            raise JobRefused(f"Model {params.model} is no longer on this bot.")
        # Sized for the model: an upscaled result is shrunk to what it can inpaint.
        prepared, key = await store_init(
            self.inputs,
            png,
            max_pixels=self.settings.max_attachment_pixels,
            spec=spec,
        )
        return replace(
            from_image(params, key),
            mode="inpaint",
            prompt=request.prompt.strip(),
            mask_prompt=words,
            mask_cell=cell,
            mask_preview=request.preview,
            seed=random_seed(),
            count=1,
            denoise=DEFAULT_REGION_DENOISE,
            inpaint_full_res=False,
            width=prepared.width,
            height=prepared.height,
        )

    def run_params(self, preview: Job) -> GenerationParams:
        """Run under a mask preview: the inpaint it showed, as it was asked for."""
        self.check_available()
        params = GenerationParams.from_dict(preview.params)
        if not params.mask_preview:
            raise JobRefused(NOT_A_PREVIEW)
        return replace(params, mask_preview=False)

"""One batch of generation jobs through the pipeline its model's family and its mode need
(SD 3 and FLUX: engine/pipelines/flow.py), on the engine thread, and the safety checker's
verdicts on its images before they leave it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from engine.api.errors import EngineError
from engine.api.families import family
from engine.api.family_checks import family_problem
from engine.api.jobs import EngineJob
from engine.api.params import GenerationResult
from engine.pipelines.conditioned import generate_conditioned
from engine.pipelines.flow import generate_flow_batch
from engine.pipelines.interpolate import generate_interpolations
from engine.pipelines.ip_adapter import image_prompting
from engine.pipelines.lora import adapters_for
from engine.pipelines.txt2img import generate_batch
from engine.pipelines.upscale import UpscaleConfig

if TYPE_CHECKING:
    from engine.worker import EngineConfig

log = logging.getLogger(__name__)


def run_batch(
    loaded: Any, config: EngineConfig, jobs: Sequence[EngineJob]
) -> list[GenerationResult]:
    """One batch through the pipeline its family and mode need, with its LoRAs applied for
    it alone.

    The submit checks judged each job by the family its model was guessed to be; here the
    loaded model says, and a job it cannot run is refused in the same sentence (a Hub id
    whose name did not tell, embeddings found in the prompt after the checks).
    """
    first = jobs[0].params
    row = family(loaded.family)
    for job in jobs:
        problem = family_problem(job.params, row)
        if problem is not None:
            raise EngineError(problem)
    # Image prompts' IP-Adapter is in the UNet only for batches that have them (SD only).
    prompting = contextlib.nullcontext() if row.flow else image_prompting(loaded, jobs)
    with torch.inference_mode(), adapters_for(loaded, first), prompting:
        if row.flow and first.mode == "txt2img":
            return generate_flow_batch(loaded, jobs, config.preview_interval, config.noise)
        if first.mode == "interpolate":
            return generate_interpolations(loaded, jobs, config.preview_interval, config.noise)
        if first.mode != "txt2img" or first.control_type is not None:
            upscale = UpscaleConfig(
                config.upscaler, config.upscale_tile, config.upscale_tile_overlap
            )
            return generate_conditioned(
                loaded, jobs, config.preview_interval, config.noise, upscale, config.segmenter
            )
        return generate_batch(loaded, jobs, config.preview_interval, config.noise)


def with_verdicts(
    results: list[GenerationResult], check: Callable[[list[bytes]], list[bool]] | None
) -> list[GenerationResult]:
    """The batch's images with the safety checker's verdicts (`check`: the configured one,
    or None). A checker that fails here leaves them unmarked: the bot then asks on its own
    (check_safety), and tells the member the check could not run if it fails again."""
    pngs = [image.png for result in results for image in result.images]
    if check is None or not pngs:
        return results
    try:
        flags = iter(check(pngs))
    except Exception:
        log.exception("the safety checker failed with the batch; the bot asks again")
        return results
    return [
        replace(result, images=[replace(image, nsfw=next(flags)) for image in result.images])
        for result in results
    ]

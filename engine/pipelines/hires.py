"""A1111's hires fix (issue 16): a txt2img batch's images upscaled, then an img2img pass.

Called from engine/pipelines/txt2img.py `generate_batch`, on the engine thread. As in
A1111, the first pass runs at the job's size; `Latent` keeps its latents and interpolates
them bilinearly (A1111's default "Latent"), `Lanczos` resizes the decoded picture. The
second pass is the img2img pipeline derived from the loaded model (image_pipes.py), with
each job's prompts, seeds, sampler and schedule, for A1111's img2img step count at the hires
denoising strength. Each job's second pass is its own call, so a job's images do not depend
on its batch mates. Progress counts both passes in one total.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from engine.api.hires import LATENT, hires_size
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams, Progress
from engine.pipelines.image_pipes import (
    ModeRun,
    call_pipeline,
    effective_strength,
    img2img_pipe,
    steps_run,
)
from engine.pipelines.loading import LoadedModel
from engine.pipelines.scheduled_conditioning import JobPrompts
from engine.pipelines.txt2img import encode_prompts

log = logging.getLogger(__name__)


def first_pass_output(params: GenerationParams) -> str:
    """What the first pass hands on: latents for a latent upscale, else pictures."""
    return "latent" if params.hires_upscaler == LATENT else "pil"


def second_pass_params(params: GenerationParams) -> GenerationParams:
    """The img2img pass as its own parameters: the hires size, steps and denoise."""
    width, height = hires_size(params)
    steps = params.hires_steps or params.steps  # 0: the first pass's, as in A1111
    return replace(params, width=width, height=height, steps=steps, denoise=params.hires_denoise)


def total_steps(params: GenerationParams) -> int:
    """Both passes' sampler steps: the first pass's, then A1111's img2img count."""
    return params.steps + steps_run(second_pass_params(params))


def counted(job: EngineJob, done: int, params: GenerationParams | None = None) -> EngineJob:
    """`job` (with `params`, if given) reporting its progress after `done` steps, out of
    both passes' total."""
    total = total_steps(job.params)

    def report(progress: Progress) -> None:
        job.report(Progress(done + progress.step, total, progress.preview_png, progress.extra))

    return EngineJob(job.job_id, params or job.params, report, job.cancel, job.inputs)


def upscale(outputs: Sequence[Any], params: GenerationParams, pipe: Any) -> Any:
    """One job's first-pass images at the hires size: a latent batch, or PIL pictures."""
    width, height = hires_size(params)
    if params.hires_upscaler == LATENT:
        size = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
        latents = torch.stack(list(outputs))
        return torch.nn.functional.interpolate(latents, size=size, mode="bilinear", antialias=False)
    return [image.resize((width, height), Image.Resampling.LANCZOS) for image in outputs]


def second_pass(
    loaded: LoadedModel,
    jobs: Sequence[EngineJob],
    prompts: Sequence[JobPrompts],
    batch: Sequence[EngineJob],
    preview_interval: float,
    noise: str,
    outputs: Sequence[Any],
) -> list[Image.Image]:
    """The run's first-pass `outputs` (images in job order) through hires fix's img2img pass;
    PIL images in the same order."""
    pipe = img2img_pipe(loaded)
    images: list[Image.Image] = []
    start = 0
    for job, job_prompts in zip(jobs, prompts, strict=True):
        first = job.params
        mine = outputs[start : start + first.count]
        start += first.count
        second = second_pass_params(first)
        if second.steps != first.steps:  # prompt editing counts the second pass's steps
            [job_prompts] = encode_prompts(loaded, [second])
        run = ModeRun(
            loaded,
            counted(job, first.steps, second),
            job_prompts,
            batch,
            preview_interval,
            noise,
            tuple(first.seeds),
            tuple(first.variation_seeds),
        )
        log.debug("job=%d hires %s to %dx%d", job.job_id, first.size, second.width, second.height)
        strength = effective_strength(second)
        images += call_pipeline(run, pipe, image=upscale(mine, first, pipe), strength=strength)
    return images

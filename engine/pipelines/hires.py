"""A1111's hires fix (issue 16): a txt2img batch's images upscaled, then an img2img pass.

Called from engine/pipelines/txt2img.py `generate_batch`, on the engine thread. As in
A1111, the first pass runs at the job's size; `Latent` keeps its latents and interpolates
them bilinearly (A1111's default "Latent"), `Lanczos` resizes the decoded picture; a target
size of another aspect is covered, then cropped in the middle (engine/api/hires.py). The
second pass is the img2img pipeline derived from the loaded model (image_pipes.py), with
each job's seeds, its hires prompts, sampler, schedule and CFG scale (else the first
pass's), for A1111's img2img step count at the hires denoising strength; its noise is
A1111's, drawn again at the hires size with the variation seeds (modules/processing.py
`sample_hr_pass`). Each job's second pass is its own call, so a job's images do not depend
on its batch mates, and a job cancelled by then is not painted. Progress counts both passes
in one total.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from engine.api.errors import JobCancelled
from engine.api.hires import (
    LATENT,
    LATENT_MULTIPLE,
    hires_size,
    latent_crop,
    second_pass_params,
    upscaled_size,
)
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
    """One job's first-pass images at the hires size: a latent batch, or PIL pictures.

    Both are upscaled to A1111's size before its crop, then cut to the final size where A1111
    cuts its latents (in whole latent pixels of 8: half the crop from each end); the
    pictures are cut before their encoding, A1111's latents after it."""
    upscaled_x, upscaled_y = upscaled_size(params)
    crop_x, crop_y = latent_crop(params)
    left, top = crop_x // 2 * LATENT_MULTIPLE, crop_y // 2 * LATENT_MULTIPLE
    width, height = hires_size(params)
    if params.hires_upscaler == LATENT:
        factor = pipe.vae_scale_factor  # 8, but 2 for the tiny test models' VAE
        latents = torch.nn.functional.interpolate(
            torch.stack(list(outputs)),
            size=(upscaled_y // factor, upscaled_x // factor),
            mode="bilinear",
            antialias=False,
        )
        rows = slice(top // factor, (top + height) // factor)
        return latents[:, :, rows, left // factor : (left + width) // factor]
    whole = (
        upscaled_x // LATENT_MULTIPLE * LATENT_MULTIPLE,
        upscaled_y // LATENT_MULTIPLE * LATENT_MULTIPLE,
    )
    box = (left, top, left + width, top + height)
    return [image.resize(whole, Image.Resampling.LANCZOS).crop(box) for image in outputs]


def second_pass(
    loaded: LoadedModel,
    jobs: Sequence[EngineJob],
    prompts: Sequence[JobPrompts],
    preview_interval: float,
    noise: str,
    outputs: Sequence[Any],
) -> list[list[Image.Image]]:
    """The run's first-pass `outputs` (images in job order) through hires fix's img2img pass:
    each job's PIL images, none for a job cancelled before or during its pass."""
    pipe = img2img_pipe(loaded)
    images: list[list[Image.Image]] = []
    start = 0
    for job, job_prompts in zip(jobs, prompts, strict=True):
        first = job.params
        mine = outputs[start : start + first.count]
        start += first.count
        try:
            images.append(_job_pass(loaded, job, job_prompts, preview_interval, noise, mine, pipe))
        except JobCancelled:  # its own call: the batch's other jobs go on
            images.append([])
    return images


def _job_pass(
    loaded: LoadedModel,
    job: EngineJob,
    job_prompts: JobPrompts,
    preview_interval: float,
    noise: str,
    mine: Sequence[Any],
    pipe: Any,
) -> list[Image.Image]:
    if job.cancel.is_set():  # cancelled in the first pass: nobody waits for these images
        raise JobCancelled()
    first = job.params
    second = second_pass_params(first)
    if (second.prompt, second.negative, second.steps) != (
        first.prompt,
        first.negative,
        first.steps,
    ):
        # The hires prompts, and prompt editing counted over the second pass's steps.
        [job_prompts] = encode_prompts(loaded, [second])
    run = ModeRun(
        loaded,
        counted(job, first.steps, second),
        job_prompts,
        [job],  # only this job waits for this call: its cancel stops it
        preview_interval,
        noise,
        tuple(first.seeds),
        tuple(first.variation_seeds),
    )
    log.debug("job=%d hires %s to %dx%d", job.job_id, first.size, second.width, second.height)
    return call_pipeline(
        run,
        pipe,
        image=upscale(mine, first, pipe),
        strength=effective_strength(second),
        noise_size=(second.width, second.height),
    )

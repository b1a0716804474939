"""/interpolate (issue 18): a job's frames between two prompts and/or two seeds, on the
engine thread, as the original Stable Diffusion demos made them.

Each end is encoded as /dream encodes it (A1111's weights, BREAK and chunks; the negative
prompt the same for both), both padded to one chunk count; frame t's embeddings are the ends'
lerped at t (SDXL's pooled ones too), its starting noise the two seeds' noise (the engine's
own, txt2img.image_noise) slerped at t. torch.lerp and the slerp return an end exactly at
t = 0 and 1, so the first and last frames are the /dream images of their ends (when both
prompts take the same number of chunks, as any two under 75 tokens do). Frames run in UNet
batches of as many images as the card holds (engine/api/memory.py `batch_images`); a frame
does not depend on its batch mates. Progress counts every frame's steps in one total.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from engine.api.errors import JobCancelled
from engine.api.infotext import build_infotext
from engine.api.interpolation import end_prompt, end_seed, frame_positions, stepping_seed
from engine.api.jobs import EngineJob
from engine.api.memory import batch_images
from engine.api.params import GeneratedImage, GenerationParams, GenerationResult, Progress
from engine.imaging.images import encode_png
from engine.pipelines.brownian import seed_noise
from engine.pipelines.guidance import a1111_guidance
from engine.pipelines.loading import LoadedModel
from engine.pipelines.lora import prompt_text
from engine.pipelines.memory import card_memory, hooked_for
from engine.pipelines.prompts import Conditioning
from engine.pipelines.scheduled_conditioning import PromptScheduler
from engine.pipelines.txt2img import StepReporter, embeds_dtype, image_noise, set_sampler, slerp


@dataclass(frozen=True, slots=True)
class Ends:
    """One job's two ends, encoded and padded to the same chunk count."""

    first: Conditioning
    last: Conditioning
    negative: Conditioning

    def positive_at(self, position: float) -> Conditioning:
        embeds = torch.lerp(self.first.embeds, self.last.embeds, position)
        pooled = None
        if self.first.pooled is not None and self.last.pooled is not None:
            pooled = torch.lerp(self.first.pooled, self.last.pooled, position)
        return Conditioning(embeds, pooled)


def frames_per_call(loaded: LoadedModel, params: GenerationParams) -> int:
    """As many frames as one UNet batch of this size holds on the card (1 on a CPU)."""
    device = loaded.device or loaded.pipe.device
    card = card_memory(device)
    return batch_images(loaded.family, loaded.plan.mode, card, params.width, params.height)


def generate_interpolations(
    loaded: LoadedModel,
    jobs: Sequence[EngineJob],
    preview_interval: float,
    noise: str = "cpu",
    per_call: int | None = None,
) -> list[GenerationResult]:
    """Every job's frames, `per_call` at a time (None: as many as the card holds); each job
    gets its frames in order, or none when it was cancelled."""
    first = jobs[0].params
    set_sampler(loaded, first.sampler, first.schedule)
    per_call = per_call or frames_per_call(loaded, first)
    results = []
    for job in jobs:
        if all(other.cancel.is_set() for other in jobs):
            raise JobCancelled()
        started = time.perf_counter()
        frames = []
        if not job.cancel.is_set():  # nobody waits for these frames any more
            frames = _job_frames(loaded, job, jobs, preview_interval, noise, per_call)
        results.append(GenerationResult(frames, loaded.model_hash, time.perf_counter() - started))
    return results


def _job_frames(
    loaded: LoadedModel,
    job: EngineJob,
    batch: Sequence[EngineJob],
    preview_interval: float,
    noise: str,
    per_call: int,
) -> list[GeneratedImage]:
    params = job.params
    positions = frame_positions(params.frames)
    calls = [positions[start : start + per_call] for start in range(0, len(positions), per_call)]
    total = params.steps * len(calls)
    job.report(Progress(step=0, total=total))
    ends = encode_ends(loaded, params)
    infotext = frame_infotext(loaded, params, noise)
    frames: list[GeneratedImage] = []
    for index, call in enumerate(calls):
        counted = _counted(job, len(call), index * params.steps, total)
        for image in _run_call(loaded, counted, ends, call, batch, preview_interval, noise):
            png = encode_png(image, infotext)
            frames.append(GeneratedImage(params.seed, png, image.width, image.height, infotext))
    return frames


def encode_ends(loaded: LoadedModel, params: GenerationParams) -> Ends:
    """Both prompts with the negative, encoded as /dream's first model call reads them."""
    scheduler = PromptScheduler(loaded.pipe, loaded.family, params.clip_skip)

    def at_start(prompt: str) -> Any:
        text = prompt_text(loaded, prompt)
        negative = prompt_text(loaded, params.negative)
        job = scheduler.job(text, negative, params.prompt_syntax, params.sampler, params.steps)
        return job.at(0)

    start, end = at_start(params.prompt), at_start(end_prompt(params))
    # The longer end's negative is already of the common length (and, for SDXL's empty
    # negative, all zeros as A1111 makes it: padding zeros would add empty-prompt chunks).
    longer = start if start.negative.chunks >= end.negative.chunks else end
    chunks = longer.negative.chunks
    encoder = scheduler.encoder
    return Ends(
        encoder.pad(start.positives[0][0], chunks),
        encoder.pad(end.positives[0][0], chunks),
        longer.negative,
    )


def frame_infotext(loaded: LoadedModel, params: GenerationParams, noise: str) -> str:
    """Every frame carries the job's infotext: the first frame's, with the interpolation's
    keys, so any frame dropped into /reproduce makes the whole animation again."""
    return build_infotext(
        params,
        seed=params.seed,
        model_hash=loaded.model_hash,
        checkpoint=loaded.spec.source,
        rng="CPU" if noise == "cpu" else None,
        extra=loaded.active.infotext if loaded.active is not None else None,
    )


def _counted(job: EngineJob, frames: int, done: int, total: int) -> EngineJob:
    """The job as one call of `frames` images sees it, reporting after `done` steps."""

    def report(progress: Progress) -> None:
        job.report(Progress(done + progress.step, total, progress.preview_png, progress.extra))

    params = replace(job.params, count=frames)
    return EngineJob(job.job_id, params, report, job.cancel, job.inputs)


def _run_call(
    loaded: LoadedModel,
    job: EngineJob,
    ends: Ends,
    positions: Sequence[float],
    batch: Sequence[EngineJob],
    preview_interval: float,
    noise: str,
) -> list[Any]:
    """One pipeline call for frames at `positions`; PIL images in order."""
    pipe: Any = loaded.pipe
    params = job.params
    noise_device = pipe.device if noise == "gpu" else torch.device("cpu")
    dtype = embeds_dtype(pipe)
    shape = (
        1,
        pipe.unet.config.in_channels,
        params.height // pipe.vae_scale_factor,
        params.width // pipe.vae_scale_factor,
    )
    start, _ = image_noise(shape, dtype, params.seed, device=noise_device)
    end, _ = image_noise(shape, dtype, end_seed(params), device=noise_device)
    noises, generators, seeds = [], [], []
    for position in positions:
        noises.append(frame_noise(position, start, end))
        seed = stepping_seed(params, position)
        # Drawn as image_noise draws it, so the sampler's steps continue the same stream.
        generators.append(image_noise(shape, dtype, seed, device=noise_device)[1])
        seeds.append(seed)
    seed_noise(pipe.scheduler, seeds)
    hooked_for(loaded, pipe)
    reporter = StepReporter(loaded, [job], preview_interval, batch=batch)
    positives = [ends.positive_at(position) for position in positions]
    with a1111_guidance(pipe, params.cfg) as guidance:
        output = pipe(
            **_embeds(loaded.family, positives, ends.negative, pipe.device, dtype),
            width=params.width,
            height=params.height,
            num_inference_steps=params.steps,
            guidance_scale=guidance,
            generator=generators,
            latents=torch.cat(noises),
            callback_on_step_end=reporter,
        )
    return list(output.images)


def frame_noise(position: float, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """A frame's starting noise: the ends' exactly at 0 and 1 (and for one seed), between
    them A1111's slerp, made in float32 as A1111 blends."""
    if position == 0 or torch.equal(start, end):
        return start
    if position == 1:
        return end
    return slerp(position, start[0].float(), end[0].float()).unsqueeze(0).to(start.dtype)


def _embeds(
    family: str,
    positives: Sequence[Conditioning],
    negative: Conditioning,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """The pipeline's embedding arguments: one row per frame."""

    def rows(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(tensors)).to(device=device, dtype=dtype)

    count = len(positives)
    embeds = {
        "prompt_embeds": rows([cond.embeds for cond in positives]),
        "negative_prompt_embeds": rows([negative.embeds] * count),
    }
    if family == "sdxl":
        embeds["pooled_prompt_embeds"] = rows([_pooled(cond) for cond in positives])
        embeds["negative_pooled_prompt_embeds"] = rows([_pooled(negative)] * count)
    return embeds


def _pooled(cond: Conditioning) -> torch.Tensor:
    if cond.pooled is None:
        raise ValueError("an SDXL prompt was encoded without its pooled embedding")
    return cond.pooled

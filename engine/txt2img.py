"""Text to image for a batch of compatible jobs, on the engine thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import diffusers
import torch

from engine.errors import JobCancelled
from engine.images import encode_png
from engine.infotext import build_infotext
from engine.loading import LoadedModel
from engine.params import GeneratedImage, GenerationParams, GenerationResult, Progress
from engine.preview import preview_png
from engine.samplers import SAMPLERS


@dataclass(slots=True)
class EngineJob:
    """One job as the engine sees it. `report` is called on the engine thread."""

    job_id: int
    params: GenerationParams
    report: Callable[[Progress], None] = lambda progress: None
    cancel: threading.Event = field(default_factory=threading.Event)


def set_sampler(loaded: LoadedModel, sampler: str) -> None:
    """Swap the scheduler (engine thread only: schedulers are not thread-safe)."""
    spec = SAMPLERS[sampler]
    scheduler_cls = getattr(diffusers, spec.scheduler)
    # Built from the model's own scheduler config each time, so options of the last sampler
    # (Karras sigmas, SDE) never leak into the next.
    loaded.pipe.scheduler = scheduler_cls.from_config(loaded.base_scheduler_config, **spec.options)


def cpu_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image: the same seed gives the same noise on any device."""
    return [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]


class StepReporter:
    """`callback_on_step_end`: progress, previews at most every `interval` s, cancellation."""

    def __init__(self, loaded: LoadedModel, jobs: Sequence[EngineJob], interval: float):
        self.loaded = loaded
        self.jobs = jobs
        self.interval = interval
        self._last_preview = time.monotonic()
        self._slices: list[slice] = []
        start = 0
        for job in jobs:
            self._slices.append(slice(start, start + job.params.count))
            start += job.params.count

    def __call__(
        self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        if all(job.cancel.is_set() for job in self.jobs):
            raise JobCancelled()
        total = pipe.num_timesteps
        now = time.monotonic()
        with_preview = now - self._last_preview >= self.interval and step + 1 < total
        if with_preview:
            self._last_preview = now
        latents = callback_kwargs["latents"]
        for job, images in zip(self.jobs, self._slices, strict=True):
            preview = preview_png(latents[images], self.loaded.family) if with_preview else None
            job.report(Progress(step=step + 1, total=total, preview_png=preview))
        return callback_kwargs


def generate_batch(
    loaded: LoadedModel, jobs: Sequence[EngineJob], preview_interval: float
) -> list[GenerationResult]:
    """Run compatible jobs as one UNet batch; each image keeps its own seed and generator."""
    first = jobs[0].params
    if any(job.params.batch_key() != first.batch_key() for job in jobs):
        raise ValueError("generate_batch got jobs that cannot share a batch")
    started = time.perf_counter()
    set_sampler(loaded, first.sampler)
    for job in jobs:
        job.report(Progress(step=0, total=first.steps))
    output = loaded.pipe(
        prompt=[job.params.prompt for job in jobs for _ in range(job.params.count)],
        negative_prompt=[job.params.negative for job in jobs for _ in range(job.params.count)],
        width=first.width,
        height=first.height,
        num_inference_steps=first.steps,
        guidance_scale=first.cfg,
        generator=cpu_generators([seed for job in jobs for seed in job.params.seeds]),
        callback_on_step_end=StepReporter(loaded, jobs, preview_interval),
        output_type="pil",
    )
    images = iter(output.images)
    encoded: list[list[GeneratedImage]] = []
    for job in jobs:
        encoded.append(
            [_encode(next(images), job.params, seed, loaded) for seed in job.params.seeds]
        )
    seconds = time.perf_counter() - started
    return [
        GenerationResult(images_of_job, loaded.model_hash, seconds) for images_of_job in encoded
    ]


def _encode(image: Any, params: GenerationParams, seed: int, loaded: LoadedModel) -> GeneratedImage:
    infotext = build_infotext(params, seed=seed, model_hash=loaded.model_hash)
    return GeneratedImage(seed, encode_png(image, infotext), image.width, image.height, infotext)

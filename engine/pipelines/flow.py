"""Text to image for a batch of compatible jobs on SD 3 and FLUX.1 (flow matching), on the
engine thread.

As the UNet path (engine/pipelines/txt2img.py) does: each image gets its own starting noise
and generator drawn from its own seed (variation seeds blended in), so a batch gives every
image what it gets alone; progress, previews and cancellation go through its StepReporter;
the infotext is A1111's, with Forge's `Distilled CFG Scale` for FLUX. Prompts pad to the
family's fixed T5 length, so every job of a batch shares one pipeline call.

The scheduler is the model's own FlowMatchEulerDiscreteScheduler, made fresh from its
config for each batch (A1111's "Euler" on these models; the pipelines compute its shifted
sigmas themselves, FLUX's from the image size).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from engine.api.errors import JobCancelled
from engine.api.families import Family, family
from engine.api.infotext import build_infotext
from engine.api.jobs import EngineJob
from engine.api.params import GeneratedImage, GenerationParams, GenerationResult, Progress
from engine.imaging.images import encode_png
from engine.pipelines.flow_prompts import FlowConditioning, FlowPromptEncoder
from engine.pipelines.loading import LoadedModel
from engine.pipelines.lora import prompt_text
from engine.pipelines.memory import hooked_for
from engine.pipelines.txt2img import StepReporter, image_noise


class FlowStepReporter(StepReporter):
    """The UNet path's reporter, shown FLUX's packed latents as the (N, 16, h, w) grid the
    preview projection reads; the pipeline keeps its own latents."""

    def __init__(self, *args: Any, size: tuple[int, int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.width, self.height = size

    def __call__(
        self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        latents = callback_kwargs["latents"]
        if latents.ndim == 3:  # FLUX: (N, patches, 64)
            latents = pipe._unpack_latents(latents, self.height, self.width, pipe.vae_scale_factor)
        super().__call__(pipe, step, timestep, {"latents": latents})
        return callback_kwargs


def generate_flow_batch(
    loaded: LoadedModel, jobs: Sequence[EngineJob], preview_interval: float, noise: str = "cpu"
) -> list[GenerationResult]:
    """Run compatible jobs as one transformer batch; each image keeps its own seed."""
    first = jobs[0].params
    if any(job.params.batch_key() != first.batch_key() for job in jobs):
        raise ValueError("generate_flow_batch got jobs that cannot share a batch")
    started = time.perf_counter()
    row = family(loaded.family)
    pipe: Any = loaded.pipe
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(loaded.base_scheduler_config)
    for job in jobs:
        job.report(Progress(step=0, total=first.steps))
    prompts = encode_flow_jobs(loaded, [job.params for job in jobs])
    if all(job.cancel.is_set() for job in jobs):
        raise JobCancelled()
    produced = iter(_run_pipeline(loaded, jobs, prompts, row, preview_interval, noise))
    results = []
    for job in jobs:
        params = job.params
        images = [
            _encode_image(next(produced), params, seed, variation_seed, loaded, row, noise)
            for seed, variation_seed in zip(params.seeds, params.variation_seeds, strict=True)
        ]
        results.append(GenerationResult(images, loaded.model_hash, time.perf_counter() - started))
    return results


# A job's prompt and, where its family runs classifier-free guidance, its negative prompt.
FlowJobPrompts = tuple[FlowConditioning, FlowConditioning | None]


def encode_flow_jobs(loaded: LoadedModel, jobs: Sequence[GenerationParams]) -> list[FlowJobPrompts]:
    row = family(loaded.family)
    encoder = FlowPromptEncoder(loaded.pipe, row)
    return [_encode_job(loaded, encoder, params, row) for params in jobs]


def _encode_job(
    loaded: LoadedModel, encoder: FlowPromptEncoder, params: GenerationParams, row: Family
) -> FlowJobPrompts:
    """The prompt, and the negative prompt where the family runs classifier-free guidance."""
    positive = encoder.encode(prompt_text(loaded, params.prompt))
    if row.guidance != "cfg":
        return positive, None
    return positive, encoder.encode(prompt_text(loaded, params.negative))


def latent_shape(pipe: Any, row: Family, width: int, height: int) -> tuple[int, int, int, int]:
    """One image's unpacked starting noise, as the pipeline's prepare_latents draws it."""
    scale = pipe.vae_scale_factor
    if row.name == "sd3":
        return (1, pipe.transformer.config.in_channels, height // scale, width // scale)
    # FLUX packs 2x2 patches: the latent sides are even, its channels a quarter of the input.
    channels = pipe.transformer.config.in_channels // 4
    return (1, channels, 2 * (height // (scale * 2)), 2 * (width // (scale * 2)))


def _starting_noise(
    pipe: Any, row: Family, jobs: Sequence[EngineJob], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, list[torch.Generator]]:
    first = jobs[0].params
    shape = latent_shape(pipe, row, first.width, first.height)
    noises, generators = [], []
    for job in jobs:
        params = job.params
        for seed, variation_seed in zip(params.seeds, params.variation_seeds, strict=True):
            start, generator = image_noise(
                shape, dtype, seed, variation_seed, params.variation_strength, device
            )
            if row.name != "sd3":
                start = pipe._pack_latents(start, *shape)
            noises.append(start)
            generators.append(generator)
    return torch.cat(noises), generators


def _per_image(parts: list[torch.Tensor], jobs: Sequence[EngineJob]) -> torch.Tensor:
    return torch.cat(
        [part for part, job in zip(parts, jobs, strict=True) for _ in range(job.params.count)]
    )


def _run_pipeline(
    loaded: LoadedModel,
    jobs: Sequence[EngineJob],
    prompts: Sequence[FlowJobPrompts],
    row: Family,
    preview_interval: float,
    noise: str,
) -> list[Any]:
    """One pipeline call for the batch; PIL images in job order."""
    pipe: Any = loaded.pipe
    first = jobs[0].params
    dtype = prompts[0][0].embeds.dtype  # the pipelines draw their latents in it
    noise_device = pipe.device if noise == "gpu" else torch.device("cpu")
    latents, generators = _starting_noise(pipe, row, jobs, dtype, noise_device)
    kwargs: dict[str, Any] = {
        "prompt_embeds": _per_image([p.embeds for p, _ in prompts], jobs),
        "pooled_prompt_embeds": _per_image([p.pooled for p, _ in prompts], jobs),
    }
    negatives = [negative for _, negative in prompts if negative is not None]
    if row.guidance == "cfg" and len(negatives) == len(prompts):
        kwargs["negative_prompt_embeds"] = _per_image([n.embeds for n in negatives], jobs)
        kwargs["negative_pooled_prompt_embeds"] = _per_image([n.pooled for n in negatives], jobs)
    size = (first.width, first.height)
    reporter = FlowStepReporter(loaded, jobs, preview_interval, batch=jobs, size=size)
    hooked_for(loaded, pipe)
    output = pipe(
        **kwargs,
        width=first.width,
        height=first.height,
        num_inference_steps=first.steps,
        guidance_scale=first.cfg,
        generator=generators,
        latents=latents,
        callback_on_step_end=reporter,
        output_type="pil",
    )
    return list(output.images)


def _encode_image(
    image: Any,
    params: GenerationParams,
    seed: int,
    variation_seed: int | None,
    loaded: LoadedModel,
    row: Family,
    noise: str,
) -> GeneratedImage:
    # As engine/pipelines/txt2img.py `_encode`, with FLUX's guidance written as Forge does.
    infotext = build_infotext(
        params,
        seed=seed,
        model_hash=loaded.model_hash,
        variation_seed=variation_seed,
        rng="CPU" if noise == "cpu" else None,
        extra=loaded.active.infotext if loaded.active is not None else None,
        # The file that was loaded, as A1111 and Forge name it: a GGUF transformer's own.
        checkpoint=loaded.spec.transformer or loaded.spec.source,
        distilled=row.guidance != "cfg",
    )
    return GeneratedImage(
        seed, encode_png(image, infotext), image.width, image.height, infotext, variation_seed
    )

"""Pipelines derived from the loaded model for the image modes, and one call of them.

Every pipeline here comes from `from_pipe` on the loaded base pipeline: it shares the base's
UNet, VAE and text encoders, so an img2img or inpaint pipeline costs no extra memory. They
are cached on the LoadedModel (`derived`) and freed with it. Runs on the engine thread only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
)
from PIL import Image

from engine.api.errors import JobCancelled
from engine.api.infotext import build_infotext
from engine.api.jobs import EngineJob
from engine.api.params import GeneratedImage, GenerationParams, Progress
from engine.api.samplers import (
    A1111_TIMESTEP_SAMPLERS,
    img2img_steps,
    split_sampler,
    timestep_img2img_start,
)
from engine.imaging.images import encode_png
from engine.pipelines.brownian import seed_noise
from engine.pipelines.composable import ComposableGuidance
from engine.pipelines.guidance import a1111_guidance
from engine.pipelines.ip_adapter import image_prompt_inputs
from engine.pipelines.loading import LoadedModel, load_unet
from engine.pipelines.memory import hooked_for
from engine.pipelines.scheduled_conditioning import JobPrompts, RunConditioning
from engine.pipelines.timestep_samplers import start_at
from engine.pipelines.txt2img import StepReporter, embeds_dtype, image_noise, make_scheduler

# Inputs are PNGs the service already checked and sized; this only bounds a damaged store.
INPUT_MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True, slots=True)
class ModeRun:
    """One job of an image mode: the model, the job, its encoded prompt schedules, and how to
    report.

    `seeds` are the images' seeds in this run (the job's, or one of them for a tile), and
    `variation_seeds` theirs, in the same order.
    """

    loaded: LoadedModel
    job: EngineJob
    prompts: JobPrompts
    batch: Sequence[EngineJob]
    preview_interval: float
    noise: str
    seeds: tuple[int, ...]
    variation_seeds: tuple[int | None, ...]
    segmenter: str | None = None  # Vary (Region)'s model, EngineConfig's (pipelines/segment.py)

    @property
    def params(self) -> GenerationParams:
        return self.job.params

    def input_image(self, key: str | None) -> Image.Image:
        """A stored input image (RGB or RGBA), read as defensively as an attachment."""
        from engine.imaging.attachments import load_image  # PIL-only module; kept off torch's path

        if key is None or key not in self.job.inputs:
            raise ValueError(f"job {self.job.job_id} lacks the bytes of input {key!r}")
        return load_image(self.job.inputs[key], max_pixels=INPUT_MAX_PIXELS)

    def check_cancelled(self) -> None:
        if all(job.cancel.is_set() for job in self.batch):
            raise JobCancelled()

    def for_part(self, seed: int, done_steps: int, total_steps: int) -> ModeRun:
        """This run for one image of one part (a tile), its progress counted in the whole."""
        job = self.job

        def report(progress: Progress) -> None:
            step = done_steps + progress.step
            job.report(Progress(step, total_steps, progress.preview_png, progress.extra))

        part = EngineJob(job.job_id, replace(job.params, count=1), report, job.cancel, job.inputs)
        return replace(self, job=part, seeds=(seed,), variation_seeds=(None,))


def steps_run(params: GenerationParams) -> int:
    """The sampler steps an image-conditioned job runs: A1111's count for its sampler and
    denoise (engine/api/samplers.py `img2img_steps`), 0 when denoise 0 keeps the image."""
    return img2img_steps(params.sampler, params.steps, params.denoise)


def effective_strength(params: GenerationParams) -> float:
    """diffusers' `strength` that starts its pipeline where A1111 starts, 0 for "keep the image".

    diffusers' img2img pipelines run the last int(steps * strength) entries of the scheduler's
    timesteps. For the k-diffusion samplers that is A1111's t_enc + 1 steps from sigma number
    steps - t_enc - 1. DDIM and PLMS lay out their lists with the run at the end when told
    where it starts (`start_at`, engine/pipelines/timestep_samplers.py); PLMS's list has its
    first step's second timestep too. Half an entry more keeps int() off a float's rounding
    edge.
    """
    entries = steps_run(params)
    if entries == 0:
        return 0.0
    sampler = split_sampler(params.sampler)[0]
    if sampler in A1111_TIMESTEP_SAMPLERS:
        if timestep_img2img_start(params.steps, params.denoise) is None:
            return 1.0  # the whole one- or two-step schedule
        entries += sampler == "PLMS"
    return min(1.0, (entries + 0.5) / params.steps)


def _start_like_a1111(scheduler: Any, params: GenerationParams) -> None:
    if split_sampler(params.sampler)[0] in A1111_TIMESTEP_SAMPLERS:
        start_at(scheduler, timestep_img2img_start(params.steps, params.denoise))


def derived_pipe(loaded: LoadedModel, name: str, make: Callable[[], Any]) -> Any:
    pipe = loaded.derived.get(name)
    if pipe is None:
        pipe = loaded.derived[name] = make()
    return pipe


def from_base(pipeline_cls: Any, loaded: LoadedModel, **components: Any) -> Any:
    """`pipeline_cls` on the loaded model's modules (plus `components`), no copies.

    from_pipe casts every module to `dtype` (float32 when not given), and the modules are
    shared: without the base's own dtype an fp16 model would be cast to fp32 in place.
    """
    pipe = pipeline_cls.from_pipe(loaded.pipe, dtype=loaded.pipe.dtype, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def img2img_pipe(loaded: LoadedModel) -> Any:
    cls = (
        StableDiffusionXLImg2ImgPipeline
        if loaded.family == "sdxl"
        else StableDiffusionImg2ImgPipeline
    )
    return derived_pipe(loaded, "img2img", lambda: from_base(cls, loaded))


def inpaint_pipe(loaded: LoadedModel) -> Any:
    """The inpainting pipeline: on the model's dedicated inpainting UNet (9 input channels:
    latents, mask, masked image) when its spec names one, else on its own UNet, which
    diffusers' inpaint pipeline drives by blending the kept latents back in at each step."""
    cls = (
        StableDiffusionXLInpaintPipeline
        if loaded.family == "sdxl"
        else StableDiffusionInpaintPipeline
    )

    def make() -> Any:
        source = loaded.spec.inpaint_source
        if not source:
            return from_base(cls, loaded)
        with torch.inference_mode(False):  # ordinary weights, usable outside inference too
            unet = load_unet(source, loaded.family, loaded.pipe.device, loaded.pipe.dtype)
        return from_base(cls, loaded, unet=unet)

    return derived_pipe(loaded, "inpaint", make)


def conditioning(run: ModeRun, pipe: Any) -> RunConditioning:
    """The job's prompt schedules, one row per image of this run, as the pipelines take them.

    A1111 counts an img2img schedule's steps from the first step it actually runs, over a
    schedule laid out for all the steps: the pipeline loop's index is that count here too.
    """
    return RunConditioning(
        [run.prompts], [len(run.seeds)], run.loaded.family, pipe.device, embeds_dtype(pipe)
    )


def _noise_device(run: ModeRun, pipe: Any) -> torch.device:
    return pipe.device if run.noise == "gpu" else torch.device("cpu")


def call_pipeline(
    run: ModeRun, pipe: Any, *, pure_noise_size: tuple[int, int] | None = None, **inputs: Any
) -> list[Image.Image]:
    """One call of a derived pipeline for the run's images; PIL images in seed order.

    Each image has its own generator seeded with its seed, so the same seed gives the same
    image alone or in a batch. A pipeline that starts from pure noise (ControlNet txt2img:
    `pure_noise_size` set) gets our starting noise, variation seeds included, exactly as
    txt2img does; img2img-like pipelines draw theirs from the generators after encoding
    the image (diffusers takes no noise for them), so variation seeds do not apply there.
    """
    params = run.params
    # from_pipe shares the base's scheduler object at derivation time; a fresh one per call
    # on the pipe actually used (engine thread only: schedulers hold per-call state).
    pipe.scheduler = make_scheduler(run.loaded, params.sampler, params.schedule)
    seed_noise(pipe.scheduler, run.seeds)
    if "strength" in inputs:  # an img2img-like pipeline: start where A1111 starts
        _start_like_a1111(pipe.scheduler, params)
    device = _noise_device(run, pipe)
    generators = [torch.Generator(device=device).manual_seed(seed) for seed in run.seeds]
    if pure_noise_size is not None:
        inputs["latents"], generators = _starting_noise(run, pipe, pure_noise_size, device)
    rows = conditioning(run, pipe)
    hooked_for(run.loaded, pipe)  # offloading modes: this derived pipeline takes the hooks
    reporter = StepReporter(
        run.loaded, [run.job], run.preview_interval, batch=run.batch, conditioning=rows
    )
    with (
        ComposableGuidance(rows, params.cfg).installed(pipe),
        a1111_guidance(pipe, params.cfg) as guidance,
    ):
        output = pipe(
            **rows.pipeline_embeds(),
            **inputs,
            num_inference_steps=params.steps,
            guidance_scale=guidance,
            generator=generators,
            callback_on_step_end=reporter,
            output_type="pil",
            **image_prompt_inputs(run.loaded, pipe, guidance),
        )
    return list(output.images)


def _starting_noise(
    run: ModeRun, pipe: Any, size: tuple[int, int], device: torch.device
) -> tuple[torch.Tensor, list[torch.Generator]]:
    params = run.params
    width, height = size
    shape = (
        1,
        pipe.unet.config.in_channels,
        height // pipe.vae_scale_factor,
        width // pipe.vae_scale_factor,
    )
    noises, generators = [], []
    for seed, variation_seed in zip(run.seeds, run.variation_seeds, strict=True):
        noise, generator = image_noise(
            shape, embeds_dtype(pipe), seed, variation_seed, params.variation_strength, device
        )
        noises.append(noise)
        generators.append(generator)
    return torch.cat(noises), generators


def encode_image(
    image: Image.Image,
    params: GenerationParams,
    seed: int,
    variation_seed: int | None,
    loaded: LoadedModel,
    noise: str,
    extra: dict[str, str],
) -> GeneratedImage:
    """Copied from engine.pipelines.txt2img._encode, with the mode's own infotext keys (`extra`)."""
    infotext = build_infotext(
        params,
        seed=seed,
        model_hash=loaded.model_hash,
        checkpoint=loaded.spec.source,
        variation_seed=variation_seed,
        rng="CPU" if noise == "cpu" else None,
        extra={**extra, **(loaded.active.infotext if loaded.active is not None else {})},
    )
    return GeneratedImage(
        seed, encode_png(image, infotext), image.width, image.height, infotext, variation_seed
    )

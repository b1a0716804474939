"""Pipelines derived from the loaded model for the image modes, and one call of them.

Every pipeline here comes from `from_pipe` on the loaded base pipeline: it shares the base's
UNet (SD 3's and FLUX's transformer), VAE and text encoders, so an img2img or inpaint
pipeline costs no extra memory. They
are cached on the LoadedModel (`derived`) and freed with it. Runs on the engine thread only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from diffusers import (
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3InpaintPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
)
from PIL import Image

from engine.api.errors import EngineError, JobCancelled
from engine.api.families import family
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
from engine.pipelines.flow import FlowJobPrompts
from engine.pipelines.flow_modes import call_flow_pipeline
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
    prompts: JobPrompts | FlowJobPrompts  # the UNet path's schedules, or SD 3's/FLUX's pair
    batch: Sequence[EngineJob]
    preview_interval: float
    noise: str
    seeds: tuple[int, ...]
    variation_seeds: tuple[int | None, ...]
    segmenter: str | None = None  # Vary (Region)'s model, EngineConfig's (pipelines/segment.py)

    @property
    def params(self) -> GenerationParams:
        return self.job.params

    @property
    def flow(self) -> bool:
        """SD 3 or FLUX: diffusers' own strength rule and the flow-matching call."""
        return family(self.loaded.family).flow

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


def steps_run(params: GenerationParams, flow: bool = False) -> int:
    """The sampler steps an image-conditioned job runs: A1111's count for its sampler and
    denoise (engine/api/samplers.py `img2img_steps`; diffusers' on SD 3 and FLUX, `flow`),
    0 when denoise 0 keeps the image."""
    return img2img_steps(params.sampler, params.steps, params.denoise, flow=flow)


def effective_strength(params: GenerationParams, flow: bool = False) -> float:
    """diffusers' `strength` that starts its pipeline where A1111 starts, 0 for "keep the image".

    SD 3 and FLUX (`flow`) run A1111's nowhere: their strength is the denoise itself, and the
    steps they run diffusers' (`img2img_steps`).

    diffusers' img2img pipelines run the last int(steps * strength) entries of the scheduler's
    timesteps. For the k-diffusion samplers that is A1111's t_enc + 1 steps from sigma number
    steps - t_enc - 1. DDIM and PLMS lay out their lists with the run at the end when told
    where it starts (`start_at`, engine/pipelines/timestep_samplers.py); PLMS's list has its
    first step's second timestep too. Half an entry more keeps int() off a float's rounding
    edge.
    """
    entries = steps_run(params, flow)
    if entries == 0:
        return 0.0
    if flow:
        return min(1.0, params.denoise)
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


# Each family's img2img and inpaint pipelines (SD 1.x and 2.x: the default's).
_IMG2IMG: dict[str, Any] = {
    "sdxl": StableDiffusionXLImg2ImgPipeline,
    "sd3": StableDiffusion3Img2ImgPipeline,
    "flux": FluxImg2ImgPipeline,
    "flux-schnell": FluxImg2ImgPipeline,
}
_INPAINT: dict[str, Any] = {
    "sdxl": StableDiffusionXLInpaintPipeline,
    "sd3": StableDiffusion3InpaintPipeline,
    "flux": FluxInpaintPipeline,
    "flux-schnell": FluxInpaintPipeline,
}


def img2img_pipe(loaded: LoadedModel) -> Any:
    cls = _IMG2IMG.get(loaded.family, StableDiffusionImg2ImgPipeline)
    return derived_pipe(loaded, "img2img", lambda: from_base(cls, loaded))


def inpaint_pipe(loaded: LoadedModel) -> Any:
    """The inpainting pipeline: on the model's dedicated inpainting UNet (9 input channels:
    latents, mask, masked image) when its spec names one, else on its own UNet, which
    diffusers' inpaint pipeline drives by blending the kept latents back in at each step
    (SD 3's and FLUX's inpaint pipelines on their transformer do the same)."""
    cls = _INPAINT.get(loaded.family, StableDiffusionInpaintPipeline)

    def make() -> Any:
        source = loaded.spec.inpaint_source
        if not source:
            return from_base(cls, loaded)
        row = family(loaded.family)
        if row.flow:  # an owner's setting this family cannot use: said, never ignored
            raise EngineError(
                f"Model {loaded.spec.name} names an inpainting UNet (inpaint_source), which "
                f"{row.label} models cannot use; the bot's owner should remove it."
            )
        with torch.inference_mode(False):  # ordinary weights, usable outside inference too
            unet = load_unet(source, loaded.family, loaded.pipe.device, loaded.pipe.dtype)
        return from_base(cls, loaded, unet=unet)

    return derived_pipe(loaded, "inpaint", make)


def conditioning(run: ModeRun, pipe: Any) -> RunConditioning:
    """The job's prompt schedules, one row per image of this run, as the pipelines take them.

    A1111 counts an img2img schedule's steps from the first step it actually runs, over a
    schedule laid out for all the steps: the pipeline loop's index is that count here too.
    """
    if not isinstance(run.prompts, JobPrompts):
        raise TypeError("a flow-matching job's prompts have no A1111 schedules")
    return RunConditioning(
        [run.prompts], [len(run.seeds)], run.loaded.family, pipe.device, embeds_dtype(pipe)
    )


def _noise_device(run: ModeRun, pipe: Any) -> torch.device:
    return pipe.device if run.noise == "gpu" else torch.device("cpu")


def call_pipeline(
    run: ModeRun,
    pipe: Any,
    *,
    pure_noise_size: tuple[int, int] | None = None,
    guidance: AbstractContextManager[dict[str, float]] | None = None,
    noise_size: tuple[int, int] | None = None,
    **inputs: Any,
) -> list[Image.Image]:
    """One call of a derived pipeline for the run's images; PIL images in seed order.

    Each image has its own generator seeded with its seed, so the same seed gives the same
    image alone or in a batch. A pipeline that starts from pure noise (ControlNet txt2img,
    an edit: `pure_noise_size` set) gets our starting noise, variation seeds included,
    exactly as txt2img does; img2img-like pipelines draw theirs from the generators after
    encoding the image (diffusers takes no noise for them), so variation seeds do not apply
    there, except where `noise_size` (hires fix's second pass) has the image noised with our
    starting noise of that size (`noised_with`). `guidance`: the pipeline's guidance
    keywords for the call (an edit's two scales); by default A1111's CFG at the job's scale.
    """
    if run.flow:
        return call_flow_pipeline(run, pipe, **inputs)
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
    if noise_size is not None:
        noised_with(pipe.scheduler, _starting_noise(run, pipe, noise_size, device)[0])
    rows = conditioning(run, pipe)
    hooked_for(run.loaded, pipe)  # offloading modes: this derived pipeline takes the hooks
    reporter = StepReporter(
        run.loaded, [run.job], run.preview_interval, batch=run.batch, conditioning=rows
    )
    with (
        ComposableGuidance(rows, params.cfg).installed(pipe),
        guidance if guidance is not None else _cfg(pipe, params.cfg) as scales,
    ):
        output = pipe(
            **rows.pipeline_embeds(),
            **inputs,
            num_inference_steps=params.steps,
            **scales,
            generator=generators,
            callback_on_step_end=reporter,
            output_type="pil",
            **image_prompt_inputs(run.loaded, pipe, scales.get("guidance_scale", params.cfg)),
        )
    return list(output.images)


@contextmanager
def _cfg(pipe: Any, cfg: float) -> Iterator[dict[str, float]]:
    with a1111_guidance(pipe, cfg) as scale:
        yield {"guidance_scale": scale}


def noised_with(scheduler: Any, noise: torch.Tensor) -> None:
    """Have an img2img pipeline noise its image with `noise` (A1111's img2img noise, variation
    seeds blended in), not the noise it draws: diffusers' img2img pipelines take none (SD 1.x
    has no `latents`) and call the scheduler's `add_noise` once, in `prepare_latents`. Their
    own draw still moves each image's generator on by one noise, as A1111's first draw of
    the seed does, so ancestral steps draw the same noise after it. The scheduler is the
    call's own (call_pipeline makes a fresh one), so nothing outlives the call."""
    add_noise = scheduler.add_noise

    def with_ours(samples: torch.Tensor, drawn: torch.Tensor, timesteps: Any) -> torch.Tensor:
        return add_noise(samples, noise.to(drawn.device, drawn.dtype), timesteps)

    scheduler.add_noise = with_ours


def _starting_noise(
    run: ModeRun, pipe: Any, size: tuple[int, int], device: torch.device
) -> tuple[torch.Tensor, list[torch.Generator]]:
    params = run.params
    width, height = size
    shape = (
        1,
        # The latents' channels: an edit's UNet takes the picture's latents beside them.
        pipe.vae.config.latent_channels,
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
    """Copied from engine.pipelines.txt2img._encode, with the mode's own infotext keys (`extra`),
    and FLUX's guidance and checkpoint name as engine.pipelines.flow writes them."""
    infotext = build_infotext(
        params,
        seed=seed,
        model_hash=loaded.model_hash,
        checkpoint=loaded.spec.transformer or loaded.spec.source,
        variation_seed=variation_seed,
        rng="CPU" if noise == "cpu" else None,
        extra={**extra, **(loaded.active.infotext if loaded.active is not None else {})},
        distilled=family(loaded.family).guidance != "cfg",
    )
    return GeneratedImage(
        seed, encode_png(image, infotext), image.width, image.height, infotext, variation_seed
    )

"""Text to image for a batch of compatible jobs, on the engine thread."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import diffusers
import numpy as np
import torch

from engine.api.errors import JobCancelled
from engine.api.infotext import build_infotext
from engine.api.jobs import EngineJob
from engine.api.params import GeneratedImage, GenerationParams, GenerationResult, Progress
from engine.api.samplers import AUTOMATIC, SAMPLERS, split_sampler
from engine.imaging.images import encode_png
from engine.pipelines.brownian import brownian_mixin, seed_noise
from engine.pipelines.composable import ComposableGuidance
from engine.pipelines.guidance import a1111_guidance
from engine.pipelines.ip_adapter import image_prompt_infotext, image_prompt_inputs
from engine.pipelines.loading import LoadedModel
from engine.pipelines.lora import prompt_text
from engine.pipelines.memory import hooked_for
from engine.pipelines.preview import preview_png
from engine.pipelines.scheduled_conditioning import JobPrompts, RunConditioning, encode_jobs
from engine.pipelines.sigmas import a1111_sigmas, model_sigmas, sigma_to_t
from engine.pipelines.timestep_samplers import timestep_mixin


def set_sampler(loaded: LoadedModel, sampler: str, schedule: str = AUTOMATIC) -> None:
    """Swap the scheduler (engine thread only: schedulers are not thread-safe)."""
    loaded.pipe.scheduler = make_scheduler(loaded, sampler, schedule)


def make_scheduler(loaded: LoadedModel, sampler: str, schedule: str = AUTOMATIC) -> Any:
    """A fresh scheduler for `sampler` under `schedule`, on A1111's sigmas.

    Built from the model's own scheduler config each time, so options of the last sampler
    (SDE, solver order) never leak into the next.
    """
    return build_scheduler(loaded.base_scheduler_config, sampler, schedule)


def build_scheduler(config: Any, sampler: str, schedule: str = AUTOMATIC) -> Any:
    """The diffusers scheduler for an A1111 sampler and schedule type, from a model's config.

    diffusers spaces timesteps its own way (`timestep_spacing`: SDXL's "leading" starts below
    A1111's first sigma; DPM-Solver's default stops early). The k-diffusion samplers are
    given A1111's sigmas instead (engine/pipelines/sigmas.py) through the one hook they all share:
    with `use_karras_sigmas` on, `set_timesteps` asks `_convert_to_karras` for the sigmas and
    derives timesteps and interleaved sub-steps from them. Euler a has no such hook, so its
    sigmas are set after diffusers' own. The SDE samplers also draw A1111's Brownian-tree
    noise (engine/pipelines/brownian.py). Timestep samplers (DDIM, PLMS, UniPC, LCM) keep
    their spacing options; DDIM and PLMS step as A1111 does
    (engine/pipelines/timestep_samplers.py).
    """
    sampler, schedule = split_sampler(sampler, schedule)
    spec = SAMPLERS[sampler]
    base_cls = getattr(diffusers, spec.scheduler)
    if spec.schedules == (AUTOMATIC,):
        stepping = timestep_mixin(sampler)
        if stepping is None:
            return base_cls.from_config(config, **spec.options)
        timestep_cls: Any = type(f"A1111{base_cls.__name__}", (stepping, base_cls), {})
        return timestep_cls.from_config(config, **spec.options)
    hooked = hasattr(base_cls, "_convert_to_karras")
    mixins: tuple[type, ...] = (_KarrasHook if hooked else _SigmasAfter,)
    if spec.brownian:
        mixins += (brownian_mixin(base_cls),)
    cls: Any = type(
        f"A1111{base_cls.__name__}",
        (*mixins, base_cls),
        {"a1111_sampler": sampler, "a1111_schedule": schedule},
    )
    options: dict[str, Any] = {"timestep_spacing": "linspace", **spec.options}
    if hooked:
        options.update(use_karras_sigmas=True, use_exponential_sigmas=False)
    return cls.from_config(config, **options)


class _A1111Sigmas:
    """What the A1111 scheduler classes share: which sampler and schedule they reproduce."""

    a1111_sampler: str
    a1111_schedule: str
    alphas_cumprod: torch.Tensor

    def a1111_sigmas(self, steps: int) -> np.ndarray:
        alphas = self.alphas_cumprod.numpy()
        return a1111_sigmas(alphas, steps, self.a1111_sampler, self.a1111_schedule)


class _KarrasHook(_A1111Sigmas):
    """diffusers' Karras conversion replaced by A1111's sigmas, without the final 0 (which
    every scheduler appends itself with `final_sigmas_type="zero"`)."""

    _a1111_steps: int

    def set_timesteps(self, num_inference_steps: int, *args: Any, **kwargs: Any) -> None:
        self._a1111_steps = num_inference_steps
        super().set_timesteps(num_inference_steps, *args, **kwargs)  # type: ignore[misc]

    def _convert_to_karras(self, in_sigmas: Any, num_inference_steps: int | None = None) -> Any:
        return self.a1111_sigmas(self._a1111_steps)[:-1]


class _SigmasAfter(_A1111Sigmas):
    """For Euler a: diffusers' set_timesteps, then A1111's sigmas and their timesteps."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        super().set_timesteps(num_inference_steps, device)  # type: ignore[misc]
        sigmas = self.a1111_sigmas(num_inference_steps)
        log_sigmas = np.log(model_sigmas(self.alphas_cumprod.numpy()))
        timesteps = [sigma_to_t(log_sigmas, float(sigma)) for sigma in sigmas[:-1]]
        self.sigmas = torch.from_numpy(sigmas.astype(np.float32))
        self.timesteps = torch.tensor(timesteps, dtype=torch.float32, device=device)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation of two (C, H, W) noise tensors (modules/rng.py).

    As in A1111 the vectors are taken along dim 1 (the latent's height), one per channel and
    column, and nearly equal noises are blended linearly with the weights the other way
    round; both matter for getting A1111's exact noise.
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    low_part = (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low
    return low_part + (torch.sin(val * omega) / so).unsqueeze(1) * high


def image_noise(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    seed: int,
    variation_seed: int | None = None,
    strength: float = 0.0,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Generator]:
    """One image's starting noise (unscaled, as `latents=` takes it) and its generator.

    Drawn exactly as diffusers' `randn_tensor` draws it from a CPU generator, so an image
    without a variation is the one a plain pipeline call gives; the same seed gives the same
    noise on any device. The generator goes on to the sampler (ancestral samplers draw from
    it at each step), so, as in A1111, only the starting noise takes the variation seed.
    `device` other than the CPU draws the noise there (A1111's "GPU" RNG): faster, but the
    same seed then gives different images on different kinds of GPU.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if variation_seed is not None and strength != 0:
        own = torch.Generator(device=device).manual_seed(variation_seed)
        other = torch.randn(shape, generator=own, device=device, dtype=dtype)
        # A1111 blends (C, H, W) tensors in float32.
        blended = slerp(strength, noise[0].float(), other[0].float())
        noise = blended.unsqueeze(0).to(dtype)
    return noise, generator


class StepReporter:
    """`callback_on_step_end`: progress, previews at most every `interval` s, cancellation,
    and the prompt schedules' next embeddings (`conditioning`).

    `jobs` are the ones in this pipeline call; `batch` all jobs of the batch (by default the
    same), which must all be cancelled for the work to stop.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        jobs: Sequence[EngineJob],
        interval: float,
        batch: Sequence[EngineJob] | None = None,
        conditioning: RunConditioning | None = None,
    ):
        self.loaded = loaded
        self.jobs = jobs
        self.batch = jobs if batch is None else batch
        self.interval = interval
        self.conditioning = conditioning
        self._last_preview = time.monotonic()
        self._slices: list[slice] = []
        start = 0
        for job in jobs:
            self._slices.append(slice(start, start + job.params.count))
            start += job.params.count

    def __call__(
        self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        if all(job.cancel.is_set() for job in self.batch):
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
        if self.conditioning is not None:
            # Embeddings that change at the next model call (prompt editing, alternation).
            callback_kwargs.update(self.conditioning.after_step(pipe, step))
        return callback_kwargs


def generate_batch(
    loaded: LoadedModel, jobs: Sequence[EngineJob], preview_interval: float, noise: str = "cpu"
) -> list[GenerationResult]:
    """Run compatible jobs as one UNet batch; each image keeps its own seed and generator.

    Jobs whose prompts encode to different numbers of 75-token chunks (at any step of their
    schedules) run one after the other, each length in its own call: padding a short prompt
    to a batch mate's length would change its image, and the same parameters must give the
    same image.
    """
    first = jobs[0].params
    if any(job.params.batch_key() != first.batch_key() for job in jobs):
        raise ValueError("generate_batch got jobs that cannot share a batch")
    started = time.perf_counter()
    set_sampler(loaded, first.sampler, first.schedule)
    # Hires fix (issue 16) builds on image_pipes.py, which builds on this module.
    from engine.pipelines import hires

    total, output_type = first.steps, "pil"
    if first.has_hires:  # progress counts both passes
        jobs = [hires.counted(job, 0) for job in jobs]
        total, output_type = hires.total_steps(first), hires.first_pass_output(first)
    for job in jobs:
        job.report(Progress(step=0, total=total))
    prompts = encode_prompts(loaded, [job.params for job in jobs])
    images: list[list[GeneratedImage]] = [[] for _ in jobs]
    for run in _runs_of_equal_length(prompts):
        if all(job.cancel.is_set() for job in jobs):
            raise JobCancelled()
        if all(jobs[index].cancel.is_set() for index in run):
            continue  # nobody waits for these images any more
        run_jobs = [jobs[index] for index in run]
        run_prompts = [prompts[index] for index in run]
        made = _run_pipeline(
            loaded, run_jobs, run_prompts, jobs, preview_interval, noise, output_type
        )
        per_job = (
            hires.second_pass(loaded, run_jobs, run_prompts, preview_interval, noise, made)
            if first.has_hires
            else _per_job(made, run_jobs)
        )
        for index, job, job_images in zip(run, run_jobs, per_job, strict=True):
            params = job.params
            images[index] = [  # none for a job cancelled before its hires pass
                _encode(image, params, seed, variation_seed, loaded, noise)
                for image, seed, variation_seed in zip(
                    job_images, params.seeds, params.variation_seeds, strict=bool(job_images)
                )
            ]
    seconds = time.perf_counter() - started
    return [GenerationResult(images_of_job, loaded.model_hash, seconds) for images_of_job in images]


def _per_job(made: Sequence[Any], jobs: Sequence[EngineJob]) -> list[list[Any]]:
    """A pipeline call's images (in job order) cut into each job's."""
    produced = iter(made)
    return [[next(produced) for _ in range(job.params.count)] for job in jobs]


def encode_prompts(loaded: LoadedModel, all_params: Sequence[GenerationParams]) -> list[JobPrompts]:
    """Each job's prompt and negative prompt, scheduled and encoded as A1111 would
    (engine/pipelines/scheduled_conditioning.py)."""
    return encode_jobs(
        loaded.pipe, loaded.family, all_params, lambda text: prompt_text(loaded, text)
    )


def _runs_of_equal_length(prompts: Sequence[JobPrompts]) -> list[list[int]]:
    runs: dict[tuple[int, ...], list[int]] = {}
    for index, job in enumerate(prompts):
        runs.setdefault(job.lengths(), []).append(index)
    return list(runs.values())


def embeds_dtype(pipe: Any) -> torch.dtype:
    # diffusers casts passed embeddings to this dtype and draws its latents in it.
    encoder = getattr(pipe, "text_encoder_2", None) or pipe.text_encoder
    return encoder.dtype


def _run_pipeline(
    loaded: LoadedModel,
    jobs: Sequence[EngineJob],
    prompts: Sequence[JobPrompts],
    batch: Sequence[EngineJob],
    preview_interval: float,
    noise: str = "cpu",
    output_type: str = "pil",
) -> list[Any]:
    """One pipeline call for jobs whose embeddings have the same lengths; PIL images (or, for
    a latent hires fix, latents) in order."""
    pipe: Any = loaded.pipe  # diffusers is untyped here; mypy sees its dummy classes
    noise_device = pipe.device if noise == "gpu" else torch.device("cpu")
    first = jobs[0].params
    dtype = embeds_dtype(pipe)
    counts = [job.params.count for job in jobs]
    conditioning = RunConditioning(prompts, counts, loaded.family, pipe.device, dtype)
    shape = (
        1,
        pipe.unet.config.in_channels,
        first.height // pipe.vae_scale_factor,
        first.width // pipe.vae_scale_factor,
    )
    noises, generators = [], []
    for job in jobs:
        params = job.params
        for seed, variation_seed in zip(params.seeds, params.variation_seeds, strict=True):
            start, generator = image_noise(
                shape, dtype, seed, variation_seed, params.variation_strength, noise_device
            )
            noises.append(start)
            generators.append(generator)
    seed_noise(pipe.scheduler, [seed for job in jobs for seed in job.params.seeds])
    hooked_for(loaded, pipe)  # offloading modes: the model's own pipeline carries the hooks
    reporter = StepReporter(loaded, jobs, preview_interval, batch=batch, conditioning=conditioning)
    with (
        ComposableGuidance(conditioning, first.cfg).installed(pipe),
        a1111_guidance(pipe, first.cfg) as guidance,
    ):
        output = pipe(
            **conditioning.pipeline_embeds(),
            width=first.width,
            height=first.height,
            num_inference_steps=first.steps,
            guidance_scale=guidance,
            generator=generators,
            # Unscaled: prepare_latents multiplies by the scheduler's init_noise_sigma itself.
            latents=torch.cat(noises),
            callback_on_step_end=reporter,
            output_type=output_type,
            **image_prompt_inputs(loaded, pipe, guidance),
        )
    return list(output.images)


def _encode(
    image: Any,
    params: GenerationParams,
    seed: int,
    variation_seed: int | None,
    loaded: LoadedModel,
    noise: str = "cpu",
) -> GeneratedImage:
    infotext = build_infotext(
        params,
        seed=seed,
        model_hash=loaded.model_hash,
        checkpoint=loaded.spec.source,
        variation_seed=variation_seed,
        # A1111 names the noise source unless it is its default, the GPU; with "RNG: CPU"
        # an A1111 install draws the same starting noise as we did.
        rng="CPU" if noise == "cpu" else None,
        extra={
            **(loaded.active.infotext if loaded.active is not None else {}),
            **image_prompt_infotext(loaded),
        },
    )
    return GeneratedImage(
        seed, encode_png(image, infotext), image.width, image.height, infotext, variation_seed
    )

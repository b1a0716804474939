"""Image-conditioned jobs (img2img, inpaint, outpaint, upscale, edit, ControlNet), engine
thread.

The worker sends here every job that is not plain txt2img. Jobs of one batch have equal
batch keys, which for these modes means the same inputs; each job is its own pipeline call,
its `count` images batched in it with one generator per seed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from PIL import Image

from engine.api.edits import FROM_NOISE_MODES
from engine.api.errors import EngineError, JobCancelled
from engine.api.families import family
from engine.api.jobs import EngineJob
from engine.api.params import GeneratedImage, GenerationParams, GenerationResult, Progress
from engine.imaging.attachments import outpaint_pads
from engine.imaging.masks import (
    MaskedWork,
    finish,
    flatten,
    mask_from_alpha,
    masked_work,
    outpaint_canvas,
)
from engine.pipelines.control import control_img2img, control_txt2img
from engine.pipelines.edit import edit
from engine.pipelines.flow import FlowJobPrompts, encode_flow_jobs
from engine.pipelines.image_pipes import (
    ModeRun,
    call_pipeline,
    effective_strength,
    encode_image,
    img2img_pipe,
    inpaint_pipe,
    steps_run,
)
from engine.pipelines.loading import LoadedModel
from engine.pipelines.scheduled_conditioning import JobPrompts
from engine.pipelines.segment import region_mask, region_preview
from engine.pipelines.txt2img import encode_prompts
from engine.pipelines.upscale import UpscaleConfig, upscale

Made = tuple[list[Image.Image], dict[str, str]]  # the images and the mode's infotext keys


def generate_conditioned(
    loaded: LoadedModel,
    jobs: Sequence[EngineJob],
    preview_interval: float,
    noise: str = "cpu",
    upscale_config: UpscaleConfig | None = None,
    segmenter: str | None = None,
) -> list[GenerationResult]:
    """Run a batch of image-conditioned jobs (equal batch keys) one job per call."""
    first = jobs[0].params
    if any(job.params.batch_key() != first.batch_key() for job in jobs):
        raise ValueError("generate_conditioned got jobs that cannot share a batch")
    config = upscale_config or UpscaleConfig()
    flow = family(loaded.family).flow
    for job in jobs:
        job.report(Progress(step=0, total=planned_steps(job.params, flow)))
    texts = [job.params for job in jobs]
    prompts: Sequence[JobPrompts | FlowJobPrompts] = (
        encode_flow_jobs(loaded, texts) if flow else encode_prompts(loaded, texts)
    )
    results = []
    for job, job_prompts in zip(jobs, prompts, strict=True):
        started = time.perf_counter()
        if all(other.cancel.is_set() for other in jobs):
            raise JobCancelled()
        if job.cancel.is_set():  # nobody waits for these images any more
            results.append(GenerationResult([], loaded.model_hash, 0.0))
            continue
        seeds, variations = tuple(job.params.seeds), tuple(job.params.variation_seeds)
        run = ModeRun(
            loaded, job, job_prompts, jobs, preview_interval, noise, seeds, variations, segmenter
        )
        images, extra = _make(run, config)
        encoded = _encode_all(run, images, extra)
        results.append(GenerationResult(encoded, loaded.model_hash, time.perf_counter() - started))
    return results


def planned_steps(params: GenerationParams, flow: bool = False) -> int:
    """The step count progress starts from (a tiled upscale corrects it once it knows its
    tiles); `flow`: an SD 3 or FLUX model, which runs diffusers' count."""
    if params.mode in FROM_NOISE_MODES:
        return params.steps
    return steps_run(params, flow)


def _make(run: ModeRun, config: UpscaleConfig) -> Made:
    mode = run.params.mode
    if run.params.control_type is not None and mode not in ("txt2img", "img2img"):
        raise EngineError("ControlNet works with /dream and /img2img only.")
    if mode == "txt2img":
        return control_txt2img(run)
    if mode == "img2img":
        return img2img(run)
    if mode == "inpaint":
        return region_preview(run) if run.params.mask_preview else inpaint(run)
    if mode == "outpaint":
        return outpaint(run)
    if mode == "upscale":
        return upscale(run, config)
    if mode == "edit":
        return edit(run, _init_rgb(run))
    raise ValueError(f"unknown mode {mode!r}")


def _encode_all(
    run: ModeRun, images: list[Image.Image], extra: dict[str, str]
) -> list[GeneratedImage]:
    params = run.params
    # Variation seeds only reach pipelines that start from pure noise (ControlNet txt2img,
    # an edit); elsewhere the infotext must not claim one.
    with_variation = params.mode in FROM_NOISE_MODES
    shown = (
        params if with_variation else replace(params, variation_seed=None, variation_strength=0.0)
    )
    variations = params.variation_seeds if with_variation else [None] * params.count
    return [
        encode_image(image, shown, seed, variation, run.loaded, run.noise, extra)
        for image, seed, variation in zip(images, params.seeds, variations, strict=True)
    ]


def _init_rgb(run: ModeRun) -> Image.Image:
    """The init image, flattened, at the job's size (the service made them equal; a stale
    input of another size is stretched, as A1111's "Just resize")."""
    params = run.params
    image = flatten(run.input_image(params.init_image))
    size = (params.width, params.height)
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def img2img(run: ModeRun) -> Made:
    """The init image noised to `denoise` and denoised again, from where A1111 starts
    (image_pipes.effective_strength)."""
    params = run.params
    init = _init_rgb(run)
    strength = effective_strength(params, run.flow)
    if strength == 0:  # denoise 0 keeps the image; diffusers would fail on zero steps
        return [init.copy() for _ in run.seeds], {}
    if params.control_type is not None:
        return control_img2img(run, init, strength)
    return call_pipeline(run, img2img_pipe(run.loaded), image=init, strength=strength), {}


def inpaint(run: ModeRun) -> Made:
    """Repaint where the mask is white (or, without one, where the image is transparent)."""
    params = run.params
    raw = run.input_image(params.init_image)
    if params.mask_image is not None:
        mask = run.input_image(params.mask_image).convert("L")
    elif params.has_region:  # Vary (Region): the mask from words or a grid cell
        mask = region_mask(run, raw)
    else:
        mask = mask_from_alpha(raw)
    original = flatten(raw)
    size = (params.width, params.height)
    if not params.inpaint_full_res and original.size != size:
        original = original.resize(size, Image.Resampling.LANCZOS)
    if mask.size != original.size:
        mask = mask.resize(original.size, Image.Resampling.LANCZOS)
    work = masked_work(
        original,
        mask,
        size,
        blur=params.mask_blur,
        only_masked=params.inpaint_full_res,
        padding=params.inpaint_padding,
    )
    return [finish(original, image, work) for image in _paint(run, work)], {}


def outpaint(run: ModeRun) -> Made:
    """Grow the canvas by the job's pads (width x height is the final size), fill the new
    area from the edges, and inpaint it with the seam, so the join disappears."""
    params = run.params
    init = flatten(run.input_image(params.init_image))
    left, right, up, down = outpaint_pads(init.width, init.height, params.outpaint)
    inner = (params.width - left - right, params.height - up - down)
    if inner != init.size:
        init = init.resize(inner, Image.Resampling.LANCZOS)
    size = (params.width, params.height)
    canvas, mask = outpaint_canvas(init, size, (left, up), params.seed)
    work = masked_work(canvas, mask, size, blur=params.mask_blur, only_masked=False, padding=0)
    return [finish(canvas, image, work) for image in _paint(run, work)], {}


def _paint(run: ModeRun, work: MaskedWork) -> list[Image.Image]:
    params = run.params
    strength = effective_strength(params, run.flow)
    if strength == 0:
        return [work.image.copy() for _ in run.seeds]
    return call_pipeline(
        run,
        inpaint_pipe(run.loaded),
        image=work.image,
        mask_image=work.mask,
        strength=strength,
        width=work.image.width,
        height=work.image.height,
    )

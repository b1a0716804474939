"""Training a LoRA (DreamBooth-style) or a textual-inversion embedding, on the engine thread.

The logic follows diffusers' examples (examples/dreambooth/train_dreambooth_lora.py and
examples/textual_inversion/textual_inversion.py): the DreamBooth loss on the noise (or
the velocity, for v-prediction models), AdamW, gradient clipping at 1.0, a constant
learning rate. What differs, and why:

- It trains the loaded pipeline in place, the GPU to itself, and leaves it exactly as it
  was afterwards, even on error or cancel: the adapter is unloaded, the embedding hooks
  removed, requires_grad flags, the scheduler and the VAE's dtype put back.
- Every random draw (data order, latent sampling, timesteps, noise, class images) comes
  from a generator seeded by (seed, purpose, step), not from running generator state. A
  run resumed from a checkpoint therefore draws exactly what an uninterrupted run draws,
  and a checkpoint needs only the trainable tensors, the optimizer, the gradient scaler
  and the step.
- Images are VAE-encoded once (their latent mean and std are kept; each step samples
  from them, as `latent_dist.sample()` does) and, for a LoRA, the prompt is encoded once:
  the UNet is the only thing that runs each step.
- What is trained (a LoRA or an embedding) and the files it becomes are in
  engine/training/methods.py; the data prepared before the first step in dataset.py, the
  steps in loop.py, the checkpoint in checkpoint.py. This module runs them in order and
  puts the pipeline back.
- Mixed precision on CUDA (autocast, fp32 LoRA weights, a gradient scaler for fp16);
  fp32 on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from engine.api.errors import EngineError
from engine.api.training_params import (
    TrainingParams,
    TrainingResult,
    sanitize_name,
    training_problem,
)
from engine.pipelines.loading import LoadedModel
from engine.pipelines.memory import TrainingPlacement
from engine.training.checkpoint import CHECKPOINT_FILE, Checkpoint, job_fingerprint
from engine.training.dataset import ReportFn, encode_images, ensure_class_images
from engine.training.loop import TrainingLoop
from engine.training.methods import EmbeddingMethod, LoraMethod, Method, training_metadata

log = logging.getLogger(__name__)


def train(
    loaded: LoadedModel,
    params: TrainingParams,
    images: list[bytes],
    *,
    workdir: Path,
    report: ReportFn,
    cancel: threading.Event,
    class_images_dir: Path | None = None,
) -> TrainingResult:
    """Train `params.method` on `images` (prepared PNGs) and write the result into `workdir`.

    Resumes from `workdir`'s checkpoint when one of the same job is there. Raises
    JobCancelled when `cancel` is set (checked between steps; the last checkpoint stays,
    so a later call resumes from it), EngineError for what the engine cannot train.
    """
    started = time.perf_counter()
    _check_request(loaded, params, images, class_images_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    with _restored_pipeline(loaded):
        class_pngs: list[bytes] = []
        if params.prior_preservation:
            assert class_images_dir is not None
            class_pngs = ensure_class_images(loaded, params, class_images_dir, report, cancel)
        placement = TrainingPlacement(loaded.pipe, loaded.plan, _device(loaded), loaded.family)
        with placement:
            examples = encode_images(loaded, images, params.resolution)
            priors = encode_images(loaded, class_pngs, params.resolution) if class_pngs else None
            method: Method = (
                LoraMethod(loaded, params)
                if params.method == "lora"
                else EmbeddingMethod(loaded, params)
            )
            with method.attached():
                if params.method == "lora":  # an embedding trains through the text encoder
                    placement.unet_only()
                checkpoint = Checkpoint(
                    workdir / CHECKPOINT_FILE, job_fingerprint(loaded, params, images)
                )
                trainer = TrainingLoop(loaded, params, method, examples, priors, checkpoint)
                resumed_from = trainer.resume()
                final_loss = trainer.run(report, cancel)
                metadata = training_metadata(loaded, params, len(images))
                path = method.save(workdir / params.file_name, metadata)
    seconds = time.perf_counter() - started
    log.info(
        "trained %s %s on %s: %d steps (resumed at %d) in %.1fs, loss %.4f",
        params.method,
        params.name,
        params.model,
        params.steps,
        resumed_from,
        seconds,
        final_loss,
    )
    return TrainingResult(path, metadata, seconds, final_loss, resumed_from)


def _device(loaded: LoadedModel) -> torch.device:
    return loaded.device or loaded.pipe.device


def _check_request(
    loaded: LoadedModel, params: TrainingParams, images: list[bytes], class_dir: Path | None
) -> None:
    if sanitize_name(params.name) != params.name:  # never build a path from raw input
        raise EngineError(f"The name {params.name!r} is not a safe file name.")
    if params.method not in ("lora", "embedding"):
        raise EngineError(f"Unknown training method {params.method!r}.")
    problem = training_problem(params, loaded.family)
    if problem is not None:  # as the submit checks say it (a family they could not tell)
        raise EngineError(problem)
    if params.prior_preservation and (class_dir is None or params.method != "lora"):
        raise EngineError("Prior preservation needs a LoRA and a folder for class images.")
    if not images:
        raise EngineError("There are no training images.")
    if params.method == "embedding" and params.token in loaded.pipe.tokenizer.get_vocab():
        # diffusers' load_textual_inversion refuses such a token: the file would be unusable.
        raise EngineError(f"{params.token!r} is already a word of this model; choose another.")
    if params.resolution % loaded.pipe.vae_scale_factor:
        raise EngineError(f"Resolution {params.resolution} is not a multiple of 8.")


# -- Leaving the pipeline as it was ---------------------------------------------------------


def _pipeline_modules(pipe: Any) -> list[torch.nn.Module]:
    names = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
    return [module for name in names if (module := getattr(pipe, name, None)) is not None]


@contextlib.contextmanager
def _restored_pipeline(loaded: LoadedModel) -> Iterator[None]:
    """Freeze every weight for training and put back what training changes, whatever happens.

    Adapters already on the pipe (LoRAs cached by engine/pipelines/lora.py) are unloaded first: the
    training adapter must be the only one, and the cache reloads what it misses.
    """
    pipe: Any = loaded.pipe
    if any(getattr(module, "peft_config", None) for module in _pipeline_modules(pipe)):
        pipe.unload_lora_weights()
    flags = [
        (parameter, parameter.requires_grad)
        for module in _pipeline_modules(pipe)
        for parameter in module.parameters()
    ]
    scheduler = pipe.scheduler
    vae_dtype = pipe.vae.dtype
    try:
        for module in _pipeline_modules(pipe):
            module.requires_grad_(False)
        yield
    finally:
        pipe.scheduler = scheduler
        if pipe.vae.dtype != vae_dtype:
            pipe.vae.to(dtype=vae_dtype)
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        if pipe.device.type == "cuda":  # the optimizer state and activations are garbage now
            torch.cuda.empty_cache()

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
  engine/training/methods.py.
- Mixed precision on CUDA (autocast, fp32 LoRA weights, a gradient scaler for fp16);
  fp32 on the CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler
from PIL import Image
from torch.nn import functional

from engine.api.errors import EngineError, JobCancelled
from engine.api.training_params import (
    TrainingParams,
    TrainingProgress,
    TrainingResult,
    sanitize_name,
)
from engine.pipelines.loading import LoadedModel
from engine.training.methods import (
    EmbeddingMethod,
    LoraMethod,
    Method,
    training_metadata,
    write_atomically,
)

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_VERSION = 1
MAX_GRAD_NORM = 1.0  # diffusers' examples' default
ADAM_WEIGHT_DECAY = 1e-2  # diffusers' examples' default
CLASS_IMAGE_CFG = 7.0

ReportFn = Callable[[TrainingProgress], None]


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
        examples = _encode_images(loaded, images, params.resolution)
        priors = _encode_images(loaded, class_pngs, params.resolution) if class_pngs else None
        method: Method = (
            LoraMethod(loaded, params)
            if params.method == "lora"
            else EmbeddingMethod(loaded, params)
        )
        with method.attached():
            trainer = _Trainer(loaded, params, method, examples, priors, workdir, images)
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


def _check_request(
    loaded: LoadedModel, params: TrainingParams, images: list[bytes], class_dir: Path | None
) -> None:
    if sanitize_name(params.name) != params.name:  # never build a path from raw input
        raise EngineError(f"The name {params.name!r} is not a safe file name.")
    if params.method not in ("lora", "embedding"):
        raise EngineError(f"Unknown training method {params.method!r}.")
    if params.method == "embedding" and loaded.family == "sdxl":
        raise EngineError("Embeddings can be trained for SD 1.x and 2.x models; use a LoRA.")
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
    names = ("unet", "vae", "text_encoder", "text_encoder_2")
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


# -- Data -----------------------------------------------------------------------------------


def derived_seed(seed: int, purpose: str, index: int) -> int:
    """A seed for one purpose and step/epoch: independent streams, no state to save."""
    digest = hashlib.sha256(f"{seed}:{purpose}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator_for(seed: int, purpose: str, index: int) -> torch.Generator:
    # CPU generators: the same draws on any device, as engine/pipelines/txt2img.py draws its noise.
    return torch.Generator().manual_seed(derived_seed(seed, purpose, index))


def example_index(seed: int, purpose: str, step: int, count: int) -> int:
    """Which example a step uses: each epoch is a fresh permutation of all of them."""
    epoch, position = divmod(step, count)
    order = torch.randperm(count, generator=generator_for(seed, purpose, epoch))
    return int(order[position])


@dataclass(frozen=True, slots=True)
class _Latents:
    """The VAE's latent distribution of each image, scaled; sampled at every step."""

    mean: torch.Tensor  # (n, 4, h, w), fp32 on the device
    std: torch.Tensor

    def sample(self, index: int, generator: torch.Generator) -> torch.Tensor:
        mean, std = self.mean[index : index + 1], self.std[index : index + 1]
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)
        return mean + std * noise

    def __len__(self) -> int:
        return self.mean.shape[0]


def _pixels(png: bytes, resolution: int) -> torch.Tensor:
    with Image.open(io.BytesIO(png)) as image:
        rgb = image.convert("RGB")
        if rgb.size != (resolution, resolution):
            rgb = rgb.resize((resolution, resolution), Image.Resampling.LANCZOS)
        array = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


@torch.no_grad()
def _encode_images(loaded: LoadedModel, pngs: Sequence[bytes], resolution: int) -> _Latents:
    pipe: Any = loaded.pipe
    vae = pipe.vae
    if vae.config.get("force_upcast", False) and vae.dtype == torch.float16:
        vae.to(dtype=torch.float32)  # SDXL's VAE overflows in fp16; put back afterwards
    means, stds = [], []
    scale = vae.config.scaling_factor
    for png in pngs:
        pixels = _pixels(png, resolution).unsqueeze(0).to(vae.device, vae.dtype)
        dist = vae.encode(pixels).latent_dist
        means.append(dist.mean.float() * scale)
        stds.append(dist.std.float() * scale)
    return _Latents(torch.cat(means), torch.cat(stds))


# -- Class images (prior preservation) --------------------------------------------------------


def ensure_class_images(
    loaded: LoadedModel,
    params: TrainingParams,
    folder: Path,
    report: ReportFn,
    cancel: threading.Event,
) -> list[bytes]:
    """The class images for prior preservation, generated by the base model when missing.

    `folder` is the caller's cache for this model and class word; file names carry the
    resolution and steps, and image i always has seed i, so the cache is shared by every
    job that asks for the same ones.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        folder / f"r{params.resolution}-s{params.class_image_steps}-{index:04d}.png"
        for index in range(params.class_images)
    ]
    missing = [index for index, path in enumerate(paths) if not path.is_file()]
    if missing:
        _generate_class_images(loaded, params, [(i, paths[i]) for i in missing], report, cancel)
    return [path.read_bytes() for path in paths]


def _generate_class_images(
    loaded: LoadedModel,
    params: TrainingParams,
    todo: list[tuple[int, Path]],
    report: ReportFn,
    cancel: threading.Event,
) -> None:
    pipe: Any = loaded.pipe
    # DPM++ 2M: good images in 25 steps. `_restored_pipeline` puts the job's scheduler back.
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(loaded.base_scheduler_config)

    def check_cancel(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if cancel.is_set():
            raise JobCancelled()
        return kwargs

    for done, (index, path) in enumerate(todo):
        report(TrainingProgress(done, len(todo), None, None, phase="class images"))
        image = pipe(
            prompt=params.class_prompt,
            width=params.resolution,
            height=params.resolution,
            num_inference_steps=params.class_image_steps,
            guidance_scale=CLASS_IMAGE_CFG,
            generator=torch.Generator().manual_seed(index),
            callback_on_step_end=check_cancel,
            output_type="pil",
        ).images[0]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        write_atomically(path, buffer.getvalue())
    report(TrainingProgress(len(todo), len(todo), None, None, phase="class images"))


# -- The loop ---------------------------------------------------------------------------------


class _Trainer:
    def __init__(
        self,
        loaded: LoadedModel,
        params: TrainingParams,
        method: Method,
        examples: _Latents,
        priors: _Latents | None,
        workdir: Path,
        images: Sequence[bytes],
    ) -> None:
        pipe: Any = loaded.pipe
        self.pipe = pipe
        self.params = params
        self.method = method
        self.examples = examples
        self.priors = priors
        self.checkpoint = workdir / CHECKPOINT_FILE
        self.fingerprint = job_fingerprint(loaded, params, images)
        self.device: torch.device = pipe.device
        self.noise_scheduler = DDPMScheduler.from_config(loaded.base_scheduler_config)
        self.prediction = self.noise_scheduler.config.prediction_type
        self.optimizer = torch.optim.AdamW(
            method.trainable(), lr=params.learning_rate, weight_decay=ADAM_WEIGHT_DECAY
        )
        cuda = self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if pipe.unet.dtype == torch.bfloat16 else torch.float16
        self.autocast = cuda
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and self.amp_dtype == torch.float16)
        self.step = 0
        self.loss = float("nan")

    # Checkpoints

    def resume(self) -> int:
        """Continue from this job's checkpoint, if there is one; returns its step."""
        if not self.checkpoint.is_file():
            return 0
        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign file: start over rather than fail the job
            log.warning("checkpoint %s is unreadable; training from the start", self.checkpoint)
            return 0
        if (
            state.get("version") != CHECKPOINT_VERSION
            or state.get("fingerprint") != self.fingerprint
        ):
            log.warning(
                "checkpoint %s is from another job; training from the start", self.checkpoint
            )
            return 0
        with torch.no_grad():
            for tensor, saved in zip(self.method.trainable(), state["trainable"], strict=True):
                tensor.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.loss = float(state["loss"])
        return self.step

    def save_checkpoint(self) -> None:
        state = {
            "version": CHECKPOINT_VERSION,
            "fingerprint": self.fingerprint,
            "step": self.step,
            "loss": self.loss,
            "trainable": [tensor.detach().cpu() for tensor in self.method.trainable()],
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_atomically(self.checkpoint, buffer.getvalue())

    # Steps

    def run(self, report: ReportFn, cancel: threading.Event) -> float:
        total = self.params.steps
        session_start, session_steps = time.perf_counter(), 0
        while self.step < total:
            if cancel.is_set():
                raise JobCancelled()
            self.loss = self.train_step(self.step)
            self.step += 1
            session_steps += 1
            if self.step % self.params.checkpoint_every == 0 or self.step == total:
                self.save_checkpoint()
            per_step = (time.perf_counter() - session_start) / session_steps
            report(TrainingProgress(self.step, total, self.loss, per_step * (total - self.step)))
        return self.loss

    def train_step(self, step: int) -> float:
        seed = self.params.seed
        draws = generator_for(seed, "step", step)
        index = example_index(seed, "instance", step, len(self.examples))
        latents = [self.examples.sample(index, draws)]
        if self.priors is not None:
            prior_index = example_index(seed, "class", step, len(self.priors))
            latents.append(self.priors.sample(prior_index, draws))
        batch = torch.cat(latents)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (batch.shape[0],), generator=draws
        ).to(self.device)
        noise = torch.randn(batch.shape, generator=draws).to(self.device)
        noisy = self.noise_scheduler.add_noise(batch, noise, timesteps)
        target = noise
        if self.prediction == "v_prediction":
            target = self.noise_scheduler.get_velocity(batch, noise, timesteps)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.autocast):
            cond = self.method.conditioning(draws, self.priors is not None)
            prediction = self.pipe.unet(
                noisy.to(self.pipe.unet.dtype),
                timesteps,
                encoder_hidden_states=cond.embeds.to(self.pipe.unet.dtype),
                added_cond_kwargs=cond.added,
            ).sample
        loss = self._loss(prediction.float(), target.float())
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.method.trainable(), MAX_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def _loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.priors is None:
            return functional.mse_loss(prediction, target)
        # DreamBooth: the class half keeps the model's idea of the class while it learns ours.
        instance, prior = prediction.chunk(2)
        instance_target, prior_target = target.chunk(2)
        prior_loss = functional.mse_loss(prior, prior_target)
        instance_loss = functional.mse_loss(instance, instance_target)
        return instance_loss + self.params.prior_loss_weight * prior_loss


def job_fingerprint(loaded: LoadedModel, params: TrainingParams, images: Sequence[bytes]) -> str:
    """What makes a checkpoint this job's: parameters, base model and the exact images."""
    data = params.to_dict()
    data.pop("checkpoint_every")
    data.pop("image_keys")  # the images themselves are hashed below
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode())
    digest.update(f"{loaded.spec.name}:{loaded.model_hash}:{loaded.family}".encode())
    for image in images:
        digest.update(hashlib.sha256(image).digest())
    return digest.hexdigest()

"""The training loop: one seeded batch per step through the denoiser (the UNet, or SD 3's
and FLUX's transformer: engine/training/objectives.py), the loss, the optimizer.

Every random draw (data order, latent sampling, timesteps, noise) comes from a generator
seeded by (seed, purpose, step), not from running generator state, so a run resumed from
its checkpoint (engine/training/checkpoint.py) draws exactly what an uninterrupted run draws.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import torch

from engine.api.errors import JobCancelled
from engine.api.training_params import TrainingParams, TrainingProgress
from engine.pipelines.loading import LoadedModel
from engine.pipelines.memory import training_optimizer
from engine.training.checkpoint import Checkpoint
from engine.training.dataset import Latents, ReportFn
from engine.training.methods import Method
from engine.training.objectives import Noised, denoiser, objective_for

MAX_GRAD_NORM = 1.0  # diffusers' examples' default
ADAM_WEIGHT_DECAY = 1e-2  # diffusers' examples' default


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


class TrainingLoop:
    """The optimizer, the gradient scaler and the step of one job's run, from its first step
    or its checkpoint's to `params.steps`."""

    def __init__(
        self,
        loaded: LoadedModel,
        params: TrainingParams,
        method: Method,
        examples: Latents,
        priors: Latents | None,
        checkpoint: Checkpoint,
    ) -> None:
        pipe: Any = loaded.pipe
        self.pipe = pipe
        self.params = params
        self.method = method
        self.examples = examples
        self.priors = priors
        self.checkpoint = checkpoint
        # The UNet's device: an offloaded pipeline's own `device` is the CPU it rests on.
        self.device: torch.device = loaded.device or pipe.device
        self.objective = objective_for(loaded, self.device)
        self.optimizer = training_optimizer(
            method.trainable(), params.learning_rate, ADAM_WEIGHT_DECAY, loaded.plan
        )
        cuda = self.device.type == "cuda"
        half = denoiser(pipe).dtype
        self.amp_dtype = torch.bfloat16 if half == torch.bfloat16 else torch.float16
        self.autocast = cuda
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and self.amp_dtype == torch.float16)
        self.step = 0
        self.loss = float("nan")

    # Checkpoints

    def resume(self) -> int:
        """Continue from this job's checkpoint, if there is one; returns its step."""
        state = self.checkpoint.read()
        if state is None:
            return 0
        with torch.no_grad():
            for tensor, saved in zip(self.method.trainable(), state["trainable"], strict=True):
                tensor.copy_(saved)
        if state.get("optimizer_kind", "AdamW") == type(self.optimizer).__name__:
            self.optimizer.load_state_dict(state["optimizer"])
        # else: resumed under another memory mode (another worker's card): the weights carry
        # on, the optimizer's moments start again.
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.loss = float(state["loss"])
        return self.step

    def save_checkpoint(self) -> None:
        self.checkpoint.write(
            {
                "step": self.step,
                "loss": self.loss,
                "trainable": [tensor.detach().cpu() for tensor in self.method.trainable()],
                "optimizer": self.optimizer.state_dict(),
                "optimizer_kind": type(self.optimizer).__name__,
                "scaler": self.scaler.state_dict(),
            }
        )

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
            saved = self.step % self.params.checkpoint_every == 0 or self.step == total
            if saved:
                self.save_checkpoint()
            per_step = (time.perf_counter() - session_start) / session_steps
            left = per_step * (total - self.step)
            report(TrainingProgress(self.step, total, self.loss, left, checkpointed=saved))
        return self.loss

    def train_step(self, step: int) -> float:
        seed = self.params.seed
        draws = generator_for(seed, "step", step)
        index = example_index(seed, "instance", step, len(self.examples))
        latents = [self.examples.sample(index, draws)]
        if self.priors is not None:
            prior_index = example_index(seed, "class", step, len(self.priors))
            latents.append(self.priors.sample(prior_index, draws))
        noised = self.objective.noised(torch.cat(latents), draws)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.autocast):
            cond = self.method.conditioning(draws, self.priors is not None)
            prediction = self.objective.predict(noised, cond)
        loss = self._loss(prediction.float(), noised)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.method.trainable(), MAX_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def _loss(self, prediction: torch.Tensor, noised: Noised) -> torch.Tensor:
        target = noised.target.float()
        if self.priors is None:
            return _mse(prediction, target, noised.weighting)
        # DreamBooth: the class half keeps the model's idea of the class while it learns ours.
        instance, prior = prediction.chunk(2)
        instance_target, prior_target = target.chunk(2)
        weights = (None, None) if noised.weighting is None else noised.weighting.chunk(2)
        prior_loss = _mse(prior, prior_target, weights[1])
        instance_loss = _mse(instance, instance_target, weights[0])
        return instance_loss + self.params.prior_loss_weight * prior_loss


def _mse(prediction: torch.Tensor, target: torch.Tensor, weighting: torch.Tensor | None) -> Any:
    """The mean squared error; weighted per image as diffusers' SD 3/FLUX scripts weigh it."""
    if weighting is None:
        return torch.nn.functional.mse_loss(prediction, target)
    squared = (weighting.float() * (prediction - target) ** 2).reshape(target.shape[0], -1)
    return squared.mean(dim=1).mean()

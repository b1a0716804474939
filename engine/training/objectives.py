"""What the denoiser learns to predict at a training step, per kind of model: the UNet's noise
(or velocity), or SD 3's and FLUX.1's flow-matching velocity. Engine thread.

The flow-matching objective is diffusers' examples/dreambooth/train_dreambooth_lora_sd3.py
and train_dreambooth_lora_flux.py: a timestep index drawn with their default density
(`logit_normal` for SD 3, uniform, their `none`, for FLUX), its sigma from the model's own
FlowMatchEulerDiscreteScheduler, the input (1 - sigma) * latents + sigma * noise, the target
noise - latents, and the loss weighting of `compute_loss_weighting_for_sd3` for that scheme
(ones for both). FLUX's latents go in packed into 2x2 patches with their position ids, with
the guidance the script trains dev at (3.5; schnell has no guidance embedding). SD 3's
script preconditions its outputs by default (`--precondition_outputs 1`); this trains the
plain velocity its FLUX script and the SD 3 paper use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from engine.api.families import family
from engine.pipelines.loading import LoadedModel

# The scripts' defaults: --weighting_scheme, --logit_mean/std, --mode_scale, --guidance_scale.
TIMESTEP_DENSITY = {"sd3": "logit_normal", "flux": "none", "flux-schnell": "none"}
LOGIT_MEAN, LOGIT_STD, MODE_SCALE = 0.0, 1.0, 1.29
FLUX_TRAINING_GUIDANCE = 3.5


@dataclass(frozen=True, slots=True)
class Noised:
    """A batch of latents noised for one step, and what the prediction is compared with."""

    model_input: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    weighting: torch.Tensor | None = None  # per image; None: plain mean squared error


def denoiser(pipe: Any) -> Any:
    """The module a LoRA trains: the UNet, or SD 3's and FLUX's transformer."""
    return getattr(pipe, "unet", None) or pipe.transformer


class NoisePrediction:
    """SD 1.x/2.x/XL: DDPM noising; the target is the noise, or the velocity for
    v-prediction models (diffusers' train_dreambooth_lora.py)."""

    def __init__(self, loaded: LoadedModel, device: torch.device) -> None:
        self.pipe: Any = loaded.pipe
        self.device = device
        self.scheduler = DDPMScheduler.from_config(loaded.base_scheduler_config)

    def noised(self, batch: torch.Tensor, draws: torch.Generator) -> Noised:
        steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (batch.shape[0],), generator=draws).to(self.device)
        noise = torch.randn(batch.shape, generator=draws).to(self.device)
        noisy = self.scheduler.add_noise(batch, noise, timesteps)
        target = noise
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(batch, noise, timesteps)
        return Noised(noisy, timesteps, target)

    def predict(self, noised: Noised, cond: Any) -> torch.Tensor:
        unet = self.pipe.unet
        return unet(
            noised.model_input.to(unet.dtype),
            noised.timesteps,
            encoder_hidden_states=cond.embeds.to(unet.dtype),
            added_cond_kwargs=cond.added,
        ).sample


class FlowMatching:
    """SD 3 and FLUX.1: the rectified-flow velocity, as diffusers' DreamBooth LoRA scripts."""

    def __init__(self, loaded: LoadedModel, device: torch.device) -> None:
        self.pipe: Any = loaded.pipe
        self.family = loaded.family
        self.device = device
        # A fresh scheduler holds the training sigmas (its set_timesteps was never called).
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(loaded.base_scheduler_config)

    def noised(self, batch: torch.Tensor, draws: torch.Generator) -> Noised:
        from diffusers.training_utils import (
            compute_density_for_timestep_sampling,
            compute_loss_weighting_for_sd3,
        )

        scheme = TIMESTEP_DENSITY[self.family]
        u = compute_density_for_timestep_sampling(
            scheme, batch.shape[0], LOGIT_MEAN, LOGIT_STD, MODE_SCALE, generator=draws
        )
        indices = (u * self.scheduler.config.num_train_timesteps).long()
        timesteps = self.scheduler.timesteps[indices].to(self.device)
        sigmas = self.scheduler.sigmas[indices].to(self.device, batch.dtype).view(-1, 1, 1, 1)
        noise = torch.randn(batch.shape, generator=draws).to(self.device)
        noisy = (1.0 - sigmas) * batch + sigmas * noise
        weighting = compute_loss_weighting_for_sd3(scheme, sigmas)
        return Noised(noisy, timesteps, noise - batch, weighting)

    def predict(self, noised: Noised, cond: Any) -> torch.Tensor:
        transformer = self.pipe.transformer
        latents = noised.model_input.to(transformer.dtype)
        pooled = cond.added["pooled_projections"].to(transformer.dtype)
        embeds = cond.embeds.to(transformer.dtype)
        if self.family == "sd3":
            return transformer(
                hidden_states=latents,
                timestep=noised.timesteps,
                encoder_hidden_states=embeds,
                pooled_projections=pooled,
                return_dict=False,
            )[0]
        return self._flux(latents, noised.timesteps, embeds, pooled)

    def _flux(
        self, latents: torch.Tensor, timesteps: torch.Tensor, embeds: torch.Tensor, pooled: Any
    ) -> torch.Tensor:
        pipe, transformer = self.pipe, self.pipe.transformer
        count, channels, height, width = latents.shape
        packed = pipe._pack_latents(latents, count, channels, height, width)
        image_ids = pipe._prepare_latent_image_ids(
            count, height // 2, width // 2, latents.device, latents.dtype
        )
        text_ids = torch.zeros(embeds.shape[1], 3, device=latents.device, dtype=latents.dtype)
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full((count,), FLUX_TRAINING_GUIDANCE, device=latents.device)
        prediction = transformer(
            hidden_states=packed,
            timestep=timesteps / 1000,  # FLUX's transformer takes the sigma-like fraction
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        scale = pipe.vae_scale_factor
        return pipe._unpack_latents(prediction, height * scale, width * scale, scale)


Objective = NoisePrediction | FlowMatching


def objective_for(loaded: LoadedModel, device: torch.device) -> Objective:
    if family(loaded.family).flow:
        return FlowMatching(loaded, device)
    return NoisePrediction(loaded, device)

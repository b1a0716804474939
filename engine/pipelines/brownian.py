"""Brownian-tree noise for the SDE samplers, drawn as A1111 draws it. Engine thread only.

A1111 runs DPM++ SDE, DPM++ 2M SDE (and its Heun variant) and DPM++ 3M SDE with k-diffusion's
`BrownianTreeNoiseSampler`, seeded with the batch's per-image seeds (`create_noise_sampler`
in modules/sd_samplers_common.py: `p.all_seeds`, the images' own seeds, never the variation
seeds). That is one torchsde `BrownianTree` per image over [smallest sigma above 0, largest
sigma] of the whole schedule (all `steps` of it, in img2img too), so an image's step noise
depends on its seed and schedule only: the same in a batch as alone, the same every time.

The trees are grown in float32 where the latents are, as A1111's are (its latents are float32
on the GPU whatever its RNG setting, and torchsde draws on the tensor's device): on an NVIDIA
card the noise is A1111's, on the CPU it is the CPU's.

diffusers' schedulers are the solvers (their update formulas are k-diffusion's, checked in
tests/test_brownian.py); the mixins here only feed them this noise, and correct the one
formula that is not k-diffusion's (DPM++ 3M SDE's second-difference term).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchsde
from diffusers import DPMSolverMultistepScheduler, DPMSolverSDEScheduler

from engine.pipelines.sigmas import model_sigmas, sigma_to_t

# torchsde's BrownianTree default tolerance, 1e-6, which k-diffusion keeps: the digits its
# interval ends are rounded to.
_TOL_DIGITS = 6


class BrownianNoise:
    """k-diffusion's `BrownianTreeNoiseSampler` over a `BatchedBrownianTree`, one tree per seed.

    Called with (sigma, sigma_next) it returns the tree's increment over that interval divided
    by sqrt(|sigma_next - sigma|): unit-variance noise, one row per image. The trees are grown
    at the first call (their values depend on the seeds and the interval only, not on when).
    """

    def __init__(
        self,
        like: torch.Tensor,
        sigmas: torch.Tensor,
        seeds: Sequence[int],
        dtype: torch.dtype | None = None,
    ) -> None:
        if len(seeds) != like.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for a batch of {like.shape[0]} images")
        # A1111's create_noise_sampler: sigmas[sigmas > 0].min(), sigmas.max().
        sigmas = sigmas.detach().to("cpu", torch.float32)
        low, high = torch.as_tensor(sigmas[sigmas > 0].min()), torch.as_tensor(sigmas.max())
        # BatchedBrownianTree sorts its ends and remembers which way round they came.
        self._start, self._end, self._sign = (low, high, 1) if low < high else (high, low, -1)
        self._seeds = tuple(int(seed) for seed in seeds)
        self._shape = tuple(like.shape[1:])
        self._device = like.device
        self._dtype = dtype or like.dtype
        self._trees: list[Any] | None = None

    def _grow(self) -> list[Any]:
        # torchsde's defaults (tol 1e-6, pool_size 24), which k-diffusion keeps.
        w0 = torch.zeros(self._shape, dtype=torch.float32, device=self._device)
        return [
            torchsde.BrownianTree(self._start, w0, self._end, entropy=seed) for seed in self._seeds
        ]

    def __call__(
        self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float
    ) -> torch.Tensor:
        if self._trees is None:
            self._trees = self._grow()
        t0 = torch.as_tensor(sigma, dtype=torch.float32)
        t1 = torch.as_tensor(sigma_next, dtype=torch.float32)
        sign = 1 if t0 < t1 else -1
        low, high = (t0, t1) if t0 < t1 else (t1, t0)
        # torchsde rounds the tree's ends to its tolerance (6 digits) and clamps a query outside
        # them to them, with a warning per call (the smallest sigma is usually below its
        # rounded self); clamping first gives the same values without the warnings.
        start, end = round(float(self._start), _TOL_DIGITS), round(float(self._end), _TOL_DIGITS)
        low_end = min(max(float(low), start), end)
        high_end = min(max(float(high), start), end)
        w = torch.stack([tree(low_end, high_end) for tree in self._trees]) * (self._sign * sign)
        noise = w / (t1 - t0).abs().sqrt().to(w.device)
        return noise.to(self._dtype)


def seed_noise(scheduler: Any, seeds: Sequence[int]) -> None:
    """Give a scheduler that draws Brownian noise its images' seeds, in batch order (engine
    thread, before the pipeline call); other schedulers take nothing."""
    if isinstance(scheduler, _SeededNoise):
        scheduler.noise_seeds = tuple(seeds)


class _SeededNoise:
    """The images' seeds a Brownian scheduler grows its trees from (`seed_noise`)."""

    noise_seeds: tuple[int, ...] | None = None
    sigmas: torch.Tensor

    def _brownian(self, sample: torch.Tensor, dtype: torch.dtype | None = None) -> BrownianNoise:
        if self.noise_seeds is None:
            # An unseeded tree would draw from random entropy: never a silent random image.
            raise ValueError(f"{type(self).__name__} needs seed_noise() before sampling")
        return BrownianNoise(sample, self.sigmas, self.noise_seeds, dtype)


class BrownianSDE(_SeededNoise):
    """For diffusers' DPMSolverSDEScheduler, a port of k-diffusion's `sample_dpmpp_sde`: its
    own noise sampler (seeded by one int for the whole batch) replaced by ours before the first
    step; `set_timesteps` clears it, so each pipeline call grows fresh trees."""

    noise_sampler: Any

    def step(
        self, model_output: Any, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        if self.noise_sampler is None:
            self.noise_sampler = self._brownian(sample)
        return super().step(model_output, timestep, sample, *args, **kwargs)  # type: ignore[misc]


class BrownianMultistep(_SeededNoise):
    """For DPMSolverMultistepScheduler with `algorithm_type="sde-dpmsolver++"`: each step's
    noise is k-diffusion's `noise_sampler(sigma, sigma_next)` (none at the last step, to 0,
    where k-diffusion returns the denoised image without drawing)."""

    step_index: int | None
    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor
    _step_noise: BrownianNoise | None = None

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        # A1111 starts from sigma_max * noise. These schedulers hold x / sqrt(1 + sigma^2),
        # so that is noise * sigma_max / sqrt(1 + sigma_max^2); diffusers' 1.0 would start
        # from sqrt(1 + sigma_max^2) * noise in A1111's terms, 0.2% more at SD's sigma_max.
        sigma_max = self.sigmas[0]
        return sigma_max / (sigma_max**2 + 1) ** 0.5

    @init_noise_sigma.setter
    def init_noise_sigma(self, value: float) -> None:
        """diffusers' __init__ sets its constant 1.0; the property above replaces it."""

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        self._step_noise = None
        super().set_timesteps(*args, **kwargs)  # type: ignore[misc]
        # diffusers rounds this scheduler's timesteps to integers; A1111's UNet is asked at
        # t(sigma) as k-diffusion's CompVisDenoiser computes it, fraction and all.
        log_sigmas = np.log(model_sigmas(self.alphas_cumprod.numpy()))
        timesteps = [sigma_to_t(log_sigmas, float(sigma)) for sigma in self.sigmas[:-1]]
        self.timesteps = torch.tensor(timesteps, dtype=torch.float32, device=self.timesteps.device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: Any = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Any:
        if self.step_index is None:
            self._init_step_index(timestep)  # type: ignore[attr-defined]
        index = self.step_index
        assert index is not None
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        if sigma_next == 0:
            noise = torch.zeros_like(sample, dtype=torch.float32)
        else:
            if self._step_noise is None:
                self._step_noise = self._brownian(sample, torch.float32)
            noise = self._step_noise(sigma, sigma_next)
        return super().step(  # type: ignore[misc]
            model_output, timestep, sample, variance_noise=noise, return_dict=return_dict
        )

    def multistep_dpm_solver_third_order_update(
        self,
        model_output_list: list[torch.Tensor],
        *args: Any,
        sample: torch.Tensor,
        noise: torch.Tensor,
        **kwargs: Any,
    ) -> torch.Tensor:
        """k-diffusion's `sample_dpmpp_3m_sde` step (eta 1), in diffusers' variance-preserving
        terms. diffusers' own weighs the second difference by -phi_3 - 1 instead of -phi_3."""
        index = self.step_index
        assert index is not None
        to_alpha_sigma = self._sigma_to_alpha_sigma_t  # type: ignore[attr-defined]
        pairs = [
            to_alpha_sigma(sigma) for sigma in self.sigmas[[index + 1, index, index - 1, index - 2]]
        ]
        (alpha_t, sigma_t), (_, sigma_s0) = pairs[0], pairs[1]
        lambda_t, lambda_s0, lambda_s1, lambda_s2 = (
            torch.log(alpha) - torch.log(sigma) for alpha, sigma in pairs
        )
        h = lambda_t - lambda_s0
        r0, r1 = (lambda_s0 - lambda_s1) / h, (lambda_s1 - lambda_s2) / h
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        h_eta = 2.0 * h
        phi_2 = torch.expm1(-h_eta) / h_eta + 1.0
        phi_3 = phi_2 / h_eta - 0.5
        denoised = -torch.expm1(-h_eta) * m0 + phi_2 * d1 - phi_3 * d2
        x_t = (sigma_t / sigma_s0 * torch.exp(-h)) * sample + alpha_t * denoised
        return x_t + sigma_t * torch.sqrt(-torch.expm1(-h_eta)) * noise


def brownian_mixin(scheduler_cls: type) -> type:
    """The mixin that feeds `scheduler_cls` (a diffusers SDE scheduler) Brownian-tree noise."""
    if issubclass(scheduler_cls, DPMSolverSDEScheduler):
        return BrownianSDE
    if issubclass(scheduler_cls, DPMSolverMultistepScheduler):
        return BrownianMultistep
    raise ValueError(f"{scheduler_cls.__name__} draws no Brownian noise here")

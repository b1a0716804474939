"""A1111's noise schedules (sigmas), computed as k-diffusion computes them. numpy only.

A1111 samples with k-diffusion: `CompVisDenoiser` turns the model's `alphas_cumprod` into
its sigmas, and modules/sd_schedulers.py picks the schedule (`Automatic` is the sampler's
own, modules/sd_samplers_kdiffusion.py). The formulas (k_diffusion/sampling.py and
k_diffusion/external.py):

- Uniform: `CompVisDenoiser.get_sigmas(n)`: t = linspace(999, 0, n), sigma(t) interpolated
  in log sigma between the two neighbouring timesteps;
- Karras: `get_sigmas_karras(n, sigma_min, sigma_max, rho=7)`;
- Exponential: `get_sigmas_exponential(n, sigma_min, sigma_max)`;
- SGM Uniform: `sgm_uniform`: t = linspace(t(sigma_max), t(sigma_min), n + 1)[:-1];

each with a final 0 appended, sigma_min/sigma_max the model's smallest and largest sigma;
and samplers with `discard_next_to_last_sigma` take n + 1 of them and drop the penultimate.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine.api.samplers import AUTOMATIC, SAMPLERS, resolved_schedule

FloatArray = npt.NDArray[np.float64]
KARRAS_RHO = 7.0  # A1111's default_rho for Karras


def model_sigmas(alphas_cumprod: npt.ArrayLike) -> FloatArray:
    """k-diffusion's CompVisDenoiser: sigma_t = sqrt((1 - a_t) / a_t), t = 0..999."""
    alphas = np.asarray(alphas_cumprod, dtype=np.float64)
    return np.asarray(((1 - alphas) / alphas) ** 0.5)


def t_to_sigma(log_sigmas: FloatArray, t: FloatArray) -> FloatArray:
    low = np.floor(t).astype(np.int64)
    high = np.ceil(t).astype(np.int64)
    weight = t - low
    return np.asarray(np.exp((1 - weight) * log_sigmas[low] + weight * log_sigmas[high]))


def sigma_to_t(log_sigmas: FloatArray, sigma: float) -> float:
    log_sigma = np.log(sigma)
    low = int(np.clip(np.sum(log_sigmas <= log_sigma) - 1, 0, len(log_sigmas) - 2))
    low_log, high_log = log_sigmas[low], log_sigmas[low + 1]
    weight = float(np.clip((low_log - log_sigma) / (low_log - high_log), 0.0, 1.0))
    return (1 - weight) * low + weight * (low + 1)


def schedule_sigmas(sigmas: FloatArray, n: int, schedule: str) -> FloatArray:
    """n sigmas of `schedule` for a model with these training sigmas, then the final 0."""
    log_sigmas = np.log(sigmas)
    sigma_min, sigma_max = float(sigmas[0]), float(sigmas[-1])
    t_max = len(sigmas) - 1
    if schedule in ("Uniform", AUTOMATIC):  # k-diffusion's get_sigmas, A1111's fallback
        out = t_to_sigma(log_sigmas, np.linspace(t_max, 0, n))
    elif schedule == "Karras":
        ramp = np.linspace(0, 1, n)
        min_inv, max_inv = sigma_min ** (1 / KARRAS_RHO), sigma_max ** (1 / KARRAS_RHO)
        out = (max_inv + ramp * (min_inv - max_inv)) ** KARRAS_RHO
    elif schedule == "Exponential":
        out = np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), n))
    elif schedule == "SGM Uniform":
        start, end = sigma_to_t(log_sigmas, sigma_max), sigma_to_t(log_sigmas, sigma_min)
        out = t_to_sigma(log_sigmas, np.linspace(start, end, n + 1)[:-1])
    else:
        raise ValueError(f"no sigma formula for schedule {schedule!r}")
    return np.append(out, 0.0)


def a1111_sigmas(
    alphas_cumprod: npt.ArrayLike, steps: int, sampler: str, schedule: str
) -> FloatArray:
    """The steps + 1 sigmas (the last 0) A1111 samples `sampler` with under `schedule`."""
    spec = SAMPLERS[sampler]
    sigmas = model_sigmas(alphas_cumprod)
    resolved = resolved_schedule(sampler, schedule)
    if not spec.discard_penultimate:
        return schedule_sigmas(sigmas, steps, resolved)
    longer = schedule_sigmas(sigmas, steps + 1, resolved)
    return np.concatenate([longer[:-2], longer[-1:]])

"""The SDE samplers' Brownian-tree noise, as A1111 draws it (issue 16).

The references are k-diffusion's published algorithms (k_diffusion/sampling.py
`sample_dpmpp_sde`, `sample_dpmpp_2m_sde`, `sample_dpmpp_3m_sde` with eta 1, s_noise 1, and its
`BrownianTreeNoiseSampler` over a `BatchedBrownianTree`), written out here and run on a toy
denoiser over the same sigmas, seeded as A1111's `create_noise_sampler` seeds them: one tree
per image, from the image's seed."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
import torchsde
from PIL import Image

from engine.api import samplers
from engine.api.jobs import EngineJob
from engine.api.samplers import SamplerSpec
from engine.api.specs import ModelSpec
from engine.pipelines.brownian import BrownianNoise, seed_noise
from engine.pipelines.loading import LoadedModel, load_model
from engine.pipelines.txt2img import build_scheduler, generate_batch
from tests.factories import tiny_params
from tests.test_samplers import SD1

SDE_SAMPLERS = ("DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE")
SEEDS = (7, 123456)
SHAPE = (2, 4, 8, 8)
TOLERANCE = 1e-5
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_BIAS = torch.linspace(-1.0, 1.0, int(np.prod(SHAPE))).reshape(SHAPE)


def toy_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A fixed linear function of x and sigma standing in for the UNet's denoised image."""
    return 0.6 * x / (1 + sigma**2) ** 0.5 + 0.3 * _BIAS


class ReferenceNoise:
    """k-diffusion's BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=[...])."""

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seeds: tuple[int, ...]):
        t0, t1 = torch.as_tensor(sigmas[sigmas > 0].min()), torch.as_tensor(sigmas.max())
        w0 = torch.zeros_like(x)[0]
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=seed) for seed in seeds]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        low, high, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w = torch.stack([tree(low, high) for tree in self.trees]) * sign
        return w / (t1 - t0).abs().sqrt()


def _ancestral(
    sigma_from: torch.Tensor, sigma_to: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    sigma_up = min(sigma_to, (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def reference_dpmpp_sde(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSampler
) -> torch.Tensor:
    def sigma_fn(t: torch.Tensor) -> torch.Tensor:
        return t.neg().exp()

    def t_fn(sigma: torch.Tensor) -> torch.Tensor:
        return sigma.log().neg()

    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        s = t + (t_next - t) * 0.5
        down, up = _ancestral(sigma_fn(t), sigma_fn(s))
        s_ = t_fn(down)
        x_2 = (sigma_fn(s_) / sigma_fn(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise(sigma_fn(t), sigma_fn(s)) * up
        denoised_2 = model(x_2, sigma_fn(s))
        down, up = _ancestral(sigma_fn(t), sigma_fn(t_next))
        t_next_ = t_fn(down)
        x = (sigma_fn(t_next_) / sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_2
        x = x + noise(sigma_fn(t), sigma_fn(t_next)) * up
    return x


def reference_dpmpp_2m_sde(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSampler, solver_type: str
) -> torch.Tensor:
    # k-diffusion's loop state: None until the first step has run.
    old_denoised: Any = None
    h_last: Any = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = (-sigmas[i + 1].log()) - (-sigmas[i].log())
            x = sigmas[i + 1] / sigmas[i] * (-h).exp() * x + (-2 * h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-2 * h).expm1().neg() / (-2 * h) + 1) * (1 / r) * (
                        denoised - old_denoised
                    )
                else:
                    x = x + 0.5 * (-2 * h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h).expm1().neg().sqrt()
        old_denoised, h_last = denoised, h
    return x


def reference_dpmpp_3m_sde(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSampler
) -> torch.Tensor:
    denoised_1: Any = None
    denoised_2: Any = None
    h_1: Any = None
    h_2: Any = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = (-sigmas[i + 1].log()) - (-sigmas[i].log())
            h_eta = h * 2
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - denoised_1) / r0, (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h).expm1().neg().sqrt()
        denoised_1, denoised_2, h_1, h_2 = denoised, denoised_1, h, h_1
    return x


def run_scheduler(
    sampler: str, steps: int, start: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scheduler driven as a pipeline drives it, the toy denoiser as its model; the final
    sample and the steps' sigmas (second-order sub-steps undone)."""
    scheduler = build_scheduler(SD1, sampler)
    scheduler.set_timesteps(steps)
    seed_noise(scheduler, SEEDS)
    multistep = sampler != "DPM++ SDE"
    x = start * scheduler.init_noise_sigma
    for index, timestep in enumerate(scheduler.timesteps):
        scheduler.scale_model_input(x, timestep)
        if multistep:  # variance-preserving samples: x / sqrt(1 + sigma^2)
            sigma = scheduler.sigmas[index]
            x_ve = x * (1 + sigma**2) ** 0.5
        else:
            first = scheduler.state_in_first_order
            sigma = scheduler.sigmas[scheduler.step_index] if first else scheduler.mid_point_sigma
            x_ve = x
        eps = (x_ve - toy_denoiser(x_ve, sigma)) / sigma
        x = scheduler.step(eps, timestep, x).prev_sample
    sigmas = scheduler.sigmas
    if not multistep:  # [s0, s1, s1, s2, s2, ..., 0]
        sigmas = torch.cat([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
    return x, sigmas


def reference(sampler: str, start: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    noise = ReferenceNoise(start, sigmas, SEEDS)
    x = start * sigmas[0]
    if sampler == "DPM++ SDE":
        return reference_dpmpp_sde(toy_denoiser, x, sigmas, noise)
    if sampler == "DPM++ 3M SDE":
        return reference_dpmpp_3m_sde(toy_denoiser, x, sigmas, noise)
    solver = "heun" if sampler.endswith("Heun") else "midpoint"
    return reference_dpmpp_2m_sde(toy_denoiser, x, sigmas, noise, solver)


# k-diffusion's own tree warns when a query falls outside its 6-digit-rounded ends.
@pytest.mark.filterwarnings("ignore:Should have:UserWarning")
@pytest.mark.parametrize("sampler", SDE_SAMPLERS)
@pytest.mark.parametrize("steps", [4, 11, 20])
def test_sde_schedulers_equal_k_diffusion_with_a1111s_noise(sampler, steps):
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    got, sigmas = run_scheduler(sampler, steps, start)
    want = reference(sampler, start, sigmas)
    assert float((got - want).abs().max()) < TOLERANCE


def test_each_image_draws_from_its_own_seed():
    like = torch.zeros(SHAPE)
    sigmas = torch.tensor([14.6, 3.0, 0.5, 0.03, 0.0])
    both = BrownianNoise(like, sigmas, SEEDS)(sigmas[1], sigmas[2])
    for row, seed in enumerate(SEEDS):
        alone = BrownianNoise(like[:1], sigmas, [seed])(sigmas[1], sigmas[2])
        assert torch.equal(both[row], alone[0])
    assert not torch.equal(both[0], both[1])
    assert 0.5 < float(both.std()) < 1.5  # unit-variance noise


def test_unseeded_brownian_scheduler_refuses_to_guess():
    scheduler = build_scheduler(SD1, "DPM++ 2M SDE")
    scheduler.set_timesteps(4)
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="seed_noise"):
        scheduler.step(x, scheduler.timesteps[0], x)


# -- on the tiny model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1(tiny_sd1) -> LoadedModel:
    return load_model(ModelSpec("tiny", str(tiny_sd1)), torch.device("cpu"), torch.float32)


def images(loaded: LoadedModel, *jobs: EngineJob) -> list[np.ndarray]:
    with torch.inference_mode():
        results = generate_batch(loaded, jobs, 60.0)
    return [_pixels(image.png) for result in results for image in result.images]


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("sampler", ["DPM++ SDE", "DPM++ 2M SDE"])
def test_tiny_model_sde_images_follow_their_seeds(sd1, sampler):
    p = tiny_params(sampler=sampler, steps=4, seed=21, count=2)
    first = images(sd1, EngineJob(1, p))
    assert all((a == b).all() for a, b in zip(first, images(sd1, EngineJob(1, p)), strict=True))
    # The second image of the batch is the image its seed gives alone, and in another batch.
    [alone] = images(sd1, EngineJob(2, replace(p, seed=22, count=1)))
    assert np.abs(first[1] - alone).max() <= 1
    other = images(
        sd1, EngineJob(3, replace(p, seed=5, count=1)), EngineJob(4, replace(p, seed=22, count=1))
    )
    assert np.abs(other[1] - alone).max() <= 1


def test_dpmpp_sde_is_no_longer_the_deterministic_solver(sd1, monkeypatch):
    p = tiny_params(sampler="DPM++ SDE", steps=4, seed=21)
    [brownian] = images(sd1, EngineJob(1, p))
    old = SamplerSpec(
        "DPMSolverSinglestepScheduler",
        {"lower_order_final": True, "final_sigmas_type": "zero"},
        automatic="Karras",
    )
    monkeypatch.setitem(samplers.SAMPLERS, "DPM++ SDE", old)
    [deterministic] = images(sd1, EngineJob(1, p))
    assert np.abs(brownian - deterministic).max() > 8

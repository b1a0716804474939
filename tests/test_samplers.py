"""A1111's sigmas for every sampler x schedule type (issue 16), against k-diffusion's
formulas written out here (k_diffusion/sampling.py `get_sigmas_karras`,
`get_sigmas_exponential`; k_diffusion/external.py `CompVisDenoiser.get_sigmas`, `t_to_sigma`;
A1111 modules/sd_schedulers.py `sgm_uniform`; modules/sd_samplers_kdiffusion.py for each
sampler's Automatic schedule and `discard_next_to_last_sigma`)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from engine.api.checks import check_params
from engine.api.params import GenerationParams, InvalidParams
from engine.api.samplers import (
    SAMPLERS,
    SCHEDULES,
    UNAVAILABLE_SAMPLERS,
    resolved_schedule,
    split_sampler,
)
from engine.api.specs import ModelSpec
from engine.pipelines.txt2img import build_scheduler

SD1 = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}
SDXL = {
    **SD1,
    "_class_name": "EulerDiscreteScheduler",
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}
TOLERANCE = 1e-4

# The Automatic schedule per sampler in A1111 1.9+ (samplers_k_diffusion's `scheduler`).
A1111_AUTOMATIC = {
    "Euler a": "Uniform",
    "Euler": "Uniform",
    "LMS": "Uniform",
    "Heun": "Uniform",
    "DPM2": "Karras",
    "DPM2 a": "Karras",
    "DPM++ 2M": "Karras",
    "DPM++ SDE": "Karras",
    "DPM++ 2M SDE": "Exponential",
    "DPM++ 2M SDE Heun": "Exponential",
    "DPM++ 3M SDE": "Exponential",
}
A1111_DISCARDS = {"DPM2", "DPM2 a", "DPM++ 3M SDE"}
K_SAMPLERS = list(A1111_AUTOMATIC)


def reference_sigmas(n: int, schedule: str, discard: bool) -> np.ndarray:
    """k-diffusion's sigmas for SD's scaled_linear betas, in float64."""
    if discard:
        longer = reference_sigmas(n + 1, schedule, discard=False)
        return np.concatenate([longer[:-2], longer[-1:]])
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    log_sigmas = np.log(sigmas)

    def t_to_sigma(t: np.ndarray) -> np.ndarray:
        low, high = np.floor(t).astype(int), np.ceil(t).astype(int)
        w = t - low
        return np.exp((1 - w) * log_sigmas[low] + w * log_sigmas[high])

    sigma_min, sigma_max = sigmas[0], sigmas[-1]
    if schedule == "Uniform":
        out = t_to_sigma(np.linspace(999, 0, n))
    elif schedule == "Karras":
        rho = 7.0
        ramp = np.linspace(0, 1, n)
        out = (
            sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
        ) ** rho
    elif schedule == "Exponential":
        out = np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), n))
    elif schedule == "SGM Uniform":
        # sigma_to_t(sigma_max) is 999 and sigma_to_t(sigma_min) is 0 exactly.
        out = t_to_sigma(np.linspace(999, 0, n + 1)[:-1])
    else:
        raise AssertionError(schedule)
    return np.append(out, 0.0)


def steps_sigmas(scheduler, sampler: str) -> np.ndarray:
    """The sigma at each step (and the final one), undoing diffusers' interleaving of
    second-order sub-steps."""
    sigmas = scheduler.sigmas.double().numpy()
    if sampler in ("Heun", "DPM++ SDE"):  # [s0, s1, s1, s2, s2, ..., 0]
        return np.concatenate([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
    if sampler in ("DPM2", "DPM2 a"):  # [s0, s1, s1, ..., 0, 0]
        return np.concatenate([sigmas[:1], sigmas[1:-1:2]])
    return sigmas


def measured(config: dict, sampler: str, schedule: str, steps: int) -> float:
    scheduler = build_scheduler(config, sampler, schedule)
    scheduler.set_timesteps(steps, device="cpu")
    resolved = resolved_schedule(sampler, schedule)
    expected = reference_sigmas(
        steps, "Uniform" if resolved == "Automatic" else resolved, sampler in A1111_DISCARDS
    )
    got = steps_sigmas(scheduler, sampler)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    return float(np.abs(got - expected).max())


@pytest.mark.parametrize("config", [SD1, SDXL], ids=["sd1", "sdxl"])
@pytest.mark.parametrize("sampler", K_SAMPLERS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_sigmas_equal_a1111(config, sampler, schedule):
    for steps in (4, 20, 33):
        assert measured(config, sampler, schedule, steps) < TOLERANCE


def test_automatic_is_a1111s_per_sampler():
    for sampler, schedule in A1111_AUTOMATIC.items():
        expected = "Automatic" if schedule == "Uniform" else schedule
        assert resolved_schedule(sampler, "Automatic") == expected
        assert SAMPLERS[sampler].discard_penultimate == (sampler in A1111_DISCARDS)


def test_first_and_last_sigma_match_a1111_on_sdxl_configs():
    # The two symptoms: SDXL's "leading" spacing started low, DPM-Solver ended high.
    for sampler in ("Euler", "DPM++ 2M", "DPM++ 2M SDE"):
        scheduler = build_scheduler(SDXL, sampler, "Uniform")
        scheduler.set_timesteps(20)
        assert float(scheduler.sigmas[0]) == pytest.approx(14.6146, abs=1e-3)
        assert float(scheduler.sigmas[-1]) == 0.0
        assert float(scheduler.sigmas[-2]) == pytest.approx(0.0292, abs=1e-3)


def a1111_levels(steps: int) -> np.ndarray:
    """A1111's timesteps for DDIM and PLMS (sd_samplers_timesteps.py get_timesteps)."""
    return np.clip(np.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)


@pytest.mark.parametrize("steps", [3, 7, 20, 30])
def test_timestep_samplers_step_on_a1111s_timesteps(steps):
    # A1111 loops over all its timesteps but the lowest, highest first; PLMS asks the model
    # twice in its first step, the second time at the next timestep.
    levels = a1111_levels(steps)
    for config in (SD1, SDXL, {**SD1, "timestep_spacing": "linspace"}):
        ddim = build_scheduler(config, "DDIM", "Automatic")
        ddim.set_timesteps(steps)
        assert ddim.timesteps.tolist() == levels[:0:-1].tolist()
        plms = build_scheduler(config, "PLMS", "Automatic")
        plms.set_timesteps(steps)
        walk = levels[:0:-1].tolist()
        assert plms.timesteps.tolist() == [walk[0], walk[1], *walk[1:]]


_TOY_BIAS = torch.linspace(-0.5, 0.5, 2 * 4 * 8 * 8).reshape(2, 4, 8, 8)


def toy_epsilon(x: torch.Tensor, t: int) -> torch.Tensor:
    """A fixed function of the sample and timestep standing in for the UNet."""
    return 0.4 * x + _TOY_BIAS * (1 + t / 1000)


def reference_ddim(x: torch.Tensor, timesteps: np.ndarray, alphas: torch.Tensor) -> torch.Tensor:
    """A1111's `ddim` (sd_samplers_timesteps_impl.py), eta 0."""
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        a_t, a_prev = alphas[timesteps[index]], alphas[timesteps[index - 1]]
        e_t = toy_epsilon(x, int(timesteps[index]))
        pred_x0 = (x - (1 - a_t).sqrt() * e_t) / a_t.sqrt()
        x = a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * e_t
    return x


def reference_plms(x: torch.Tensor, timesteps: np.ndarray, alphas: torch.Tensor) -> torch.Tensor:
    """A1111's `plms` (sd_samplers_timesteps_impl.py)."""

    def x_prev(x: torch.Tensor, e_t: torch.Tensor, index: int) -> torch.Tensor:
        a_t, a_prev = alphas[timesteps[index]], alphas[timesteps[index - 1]]
        pred_x0 = (x - (1 - a_t).sqrt() * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * e_t

    old: list[torch.Tensor] = []
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = toy_epsilon(x, int(timesteps[index]))
        if not old:
            e_next = toy_epsilon(x_prev(x, e_t, index), int(timesteps[max(index - 1, 0)]))
            prime = (e_t + e_next) / 2
        elif len(old) == 1:
            prime = (3 * e_t - old[-1]) / 2
        elif len(old) == 2:
            prime = (23 * e_t - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            prime = (55 * e_t - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        x = x_prev(x, prime, index)
        old = [*old, e_t][-3:]
    return x


def drive(scheduler, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    for t in timesteps:
        x = scheduler.step(toy_epsilon(x, int(t)), t, x).prev_sample
    return x


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS"])
@pytest.mark.parametrize("steps", [4, 7, 20, 30])
def test_timestep_samplers_equal_a1111s_loops(sampler, steps):
    reference = reference_ddim if sampler == "DDIM" else reference_plms
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    scheduler = build_scheduler(SD1, sampler, "Automatic")
    scheduler.set_timesteps(steps)
    want = reference(noise, a1111_levels(steps), scheduler.alphas_cumprod)
    got = drive(scheduler, noise * scheduler.init_noise_sigma, scheduler.timesteps)
    assert float((got - want).abs().max()) < 1e-5


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS"])
@pytest.mark.parametrize(("steps", "denoise"), [(20, 0.75), (30, 0.3), (7, 0.5), (20, 1.0)])
def test_timestep_samplers_start_img2img_where_a1111_does(sampler, steps, denoise):
    # sample_img2img: noise to timestep number t_enc, then loop over the t_enc lowest.
    from engine.pipelines.image_pipes import effective_strength, steps_run
    from engine.pipelines.timestep_samplers import start_at

    params = _params(mode="img2img", sampler=sampler, steps=steps, denoise=denoise)
    t_enc = int(min(denoise, 0.999) * steps)
    levels = a1111_levels(steps)
    image = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    scheduler = build_scheduler(SD1, sampler, "Automatic")
    alphas = scheduler.alphas_cumprod
    a = alphas[levels[t_enc]]
    reference = reference_ddim if sampler == "DDIM" else reference_plms
    want = reference(image * a.sqrt() + noise * (1 - a).sqrt(), levels[:t_enc], alphas)
    start_at(scheduler, t_enc)
    scheduler.set_timesteps(steps)
    # What diffusers' img2img pipelines run: the last int(steps * strength) entries.
    strength = effective_strength(params)
    timesteps = scheduler.timesteps[steps - int(steps * strength) :]
    x = scheduler.add_noise(image, noise, timesteps[:1])
    assert float((drive(scheduler, x, timesteps) - want).abs().max()) < 1e-5
    assert steps_run(params) == t_enc - 1


def test_unet_timesteps_follow_the_sigmas():
    # The UNet is asked about the noise level it gets: t(sigma) on the model's own table.
    scheduler = build_scheduler(SD1, "Euler a", "Automatic")
    scheduler.set_timesteps(10)
    assert torch.allclose(scheduler.timesteps, torch.linspace(999, 0, 10), atol=1e-3)


@pytest.mark.parametrize(
    ("name", "schedule", "pair"),
    [
        ("DPM++ 2M Karras", "Automatic", ("DPM++ 2M", "Karras")),
        ("DPM++ 2M SDE Karras", "Automatic", ("DPM++ 2M SDE", "Karras")),
        ("DPM++ 2M SDE Heun Exponential", "Automatic", ("DPM++ 2M SDE Heun", "Exponential")),
        ("DPM++ 2M", "Karras", ("DPM++ 2M", "Karras")),
        ("DPM++ 2M", "karras", ("DPM++ 2M", "Karras")),
        ("Euler a", "SGMUniform", ("Euler a", "SGM Uniform")),
        ("PNDM", "Automatic", ("PLMS", "Automatic")),
        ("DPM++ 2S a Karras", "Automatic", ("DPM++ 2S a", "Karras")),
        ("Euler z", "Automatic", ("Euler z", "Automatic")),
    ],
)
def test_split_sampler(name, schedule, pair):
    assert split_sampler(name, schedule) == pair


def test_stored_combined_names_still_load():
    old = {
        "prompt": "p",
        "negative": "",
        "seed": 1,
        "steps": 20,
        "cfg": 7.0,
        "width": 512,
        "height": 512,
        "sampler": "DPM++ 2M Karras",
        "count": 1,
        "model": "sd15",
    }
    params = GenerationParams.from_dict(old)
    assert (params.sampler, params.schedule) == ("DPM++ 2M", "Karras")
    assert GenerationParams.from_dict(params.to_dict()) == params


MODELS = {"sd15": ModelSpec("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5")}


def _params(**changes) -> GenerationParams:
    base = dict(
        prompt="p", negative="", seed=1, steps=20, cfg=7.0, width=512, height=512,
        sampler="Euler a", count=1, model="sd15",
    )  # fmt: skip
    return GenerationParams(**{**base, **changes})


@pytest.mark.parametrize("sampler", sorted(UNAVAILABLE_SAMPLERS))
def test_unavailable_samplers_are_named(sampler):
    with pytest.raises(InvalidParams, match=re.escape(f"Sampler {sampler} is not available here")):
        check_params(_params(sampler=sampler), MODELS, 100)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schedule": "Align Your Steps"}, "Schedule type Align Your Steps is not available"),
        ({"schedule": "Wobbly"}, "Unknown schedule type 'Wobbly'"),
        ({"sampler": "DDIM", "schedule": "Karras"}, "DDIM takes no schedule type"),
    ],
)
def test_refused_schedules(changes, message):
    with pytest.raises(InvalidParams, match=message):
        check_params(_params(**changes), MODELS, 100)


def test_schedule_splits_batches():
    assert _params(schedule="Karras").batch_key() != _params().batch_key()


def test_schedule_type_written_and_read_as_a1111_does():
    from engine.api.infotext import build_infotext, params_from_infotext

    karras = build_infotext(_params(sampler="DPM++ 2M"), seed=1, model_hash=None)
    assert "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7," in karras
    euler = build_infotext(_params(), seed=1, model_hash=None)
    assert "Sampler: Euler a, Schedule type: Automatic, CFG scale" in euler
    chosen = _params(sampler="DPM++ 2M", schedule="SGM Uniform")
    back = params_from_infotext(build_infotext(chosen, seed=1, model_hash=None))
    assert (back.sampler, back.schedule) == ("DPM++ 2M", "SGM Uniform")
    # No Schedule type (A1111 before 1.9) is Automatic: Karras for DPM++ 2M.
    old = params_from_infotext("p\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Size: 8x8")
    assert resolved_schedule(old.sampler, old.schedule) == "Karras"

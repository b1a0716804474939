"""DDIM and PLMS stepped as A1111 steps them (modules/sd_samplers_timesteps.py and
sd_samplers_timesteps_impl.py). Engine thread only.

A1111 lays out the timesteps `clip(range(0, 1000, 1000 // steps) + 1, 0, 999)`, lowest first
(20 steps: 1, 51, ..., 951; 30 steps: 31 of them, 1, 34, ..., 991, since 1000 // 30 is 33),
and loops over all but the lowest: each step goes from one timestep to the next lower one, so
the image ends at timestep 1. diffusers' DDIM and PNDM space their timesteps and step to
`t - 1000 // steps` their own way (one step more, to alpha 0; other timesteps whenever
1000 // steps does not divide evenly), so the steps here are A1111's own, on diffusers'
schedulers for the config, `add_noise` and the pipelines.

PLMS's first step is a pseudo improved Euler step: the model is asked again at the next
timestep, so that timestep comes twice in the list the pipeline walks.

img2img (`sample_img2img`): A1111 noises the image to timestep number t_enc and then runs its
loop over the t_enc lowest timesteps, from number t_enc - 1 down: the first model call is told
one timestep less noise than was added. `start_at(t_enc)` makes the next pipeline call do the
same. diffusers' img2img pipelines run the last int(steps * strength) entries of the list, so
the list is then `steps` long, the run at its end (image_pipes.effective_strength).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerOutput

# A1111's get_timesteps adds 1 whatever the model's steps_offset.
_OFFSET = 1


def a1111_timesteps(train_steps: int, steps: int) -> np.ndarray:
    """A1111's timesteps for `steps` DDIM or PLMS steps, lowest first."""
    levels = np.arange(0, train_steps, train_steps // steps) + _OFFSET
    return np.clip(levels, 0, train_steps - 1).astype(np.int64)


class A1111Timesteps:
    """What DDIM and PLMS share: A1111's timesteps, the img2img start and its noise."""

    a1111_start: int | None = None
    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: torch.Tensor
    config: Any
    _levels: np.ndarray
    _position: dict[int, int]
    _noised: bool = False

    def start_at(self, t_enc: int | None) -> None:
        """img2img from A1111's t_enc (at least 2); None: from the top (txt2img)."""
        self.a1111_start = t_enc

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        super().set_timesteps(num_inference_steps, device)  # type: ignore[misc]
        self._reset()
        self._levels = a1111_timesteps(self.config.num_train_timesteps, num_inference_steps)
        self._position = {int(level): index for index, level in enumerate(self._levels)}
        self._noised = False
        run = self._run(self.a1111_start or len(self._levels))
        if self.a1111_start is not None:
            # Entries the pipeline slices off before the run; never stepped on.
            head = np.full(num_inference_steps - len(run), self._levels[-1])
            run = np.concatenate([head, run])
        self.timesteps = torch.from_numpy(run.copy()).to(device)

    def _reset(self) -> None:
        """Clear per-call state."""

    def _run(self, first: int) -> np.ndarray:
        """The timesteps of a run whose first step is at level first - 1."""
        run = self._levels[first - 1 : 0 : -1]
        return run if len(run) else self._levels[:1]  # one step: from the lowest to alpha 0

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        # Only the starting noise: the inpaint pipeline re-noises the kept area at each step's
        # own timestep afterwards.
        if self.a1111_start is not None and not self._noised:
            level = int(self._levels[self.a1111_start])
            timesteps = torch.full_like(timesteps, level)
        self._noised = True
        return super().add_noise(original_samples, noise, timesteps)  # type: ignore[misc]

    def _alphas(self, timestep: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
        """alpha_cumprod at this timestep and at the next lower one, and its level's index."""
        index = self._position[int(timestep)]
        alpha = self.alphas_cumprod[int(self._levels[index])]
        below = self.alphas_cumprod[int(self._levels[index - 1])] if index else None
        return alpha, self.final_alpha_cumprod if below is None else below, index

    def _epsilon(
        self, model_output: torch.Tensor, sample: torch.Tensor, alpha: torch.Tensor
    ) -> torch.Tensor:
        """The predicted noise, as A1111's CompVisTimestepsVDenoiser makes it of a v-prediction."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return model_output
        if kind == "v_prediction":
            return alpha.sqrt() * model_output + (1 - alpha).sqrt() * sample
        raise ValueError(f"A1111's DDIM and PLMS take no {kind!r} models")

    @staticmethod
    def _prev(
        sample: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, below: torch.Tensor
    ) -> torch.Tensor:
        """A1111's deterministic step (eta 0) from `alpha` down to `below`."""
        pred_x0 = (sample - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        return below.sqrt() * pred_x0 + (1 - below).sqrt() * eps


def _output(prev_sample: torch.Tensor, return_dict: bool) -> Any:
    return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)


class A1111DDIM(A1111Timesteps):
    """A1111's `ddim` (eta 0, A1111's default for DDIM)."""

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> Any:
        alpha, below, _ = self._alphas(timestep)
        alpha, below = alpha.to(sample), below.to(sample)
        eps = self._epsilon(model_output, sample, alpha)
        return _output(self._prev(sample, eps, alpha, below), return_dict)


class A1111PLMS(A1111Timesteps):
    """A1111's `plms`: a pseudo improved Euler first step (its second model call at the next
    timestep, repeated in the list), then Adams-Bashforth steps on up to four past noises."""

    _old_eps: list[torch.Tensor]
    _warm_up: tuple[torch.Tensor, torch.Tensor, int] | None

    def _reset(self) -> None:
        self._old_eps = []
        self._warm_up = None

    def _run(self, first: int) -> np.ndarray:
        run = super()._run(first)
        if first < 2:
            return run
        return np.concatenate([run[:1], self._levels[first - 2 : first - 1], run[1:]])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> Any:
        if self._warm_up is not None:  # the second call of the first step
            start, eps_start, index = self._warm_up
            self._warm_up = None
            alpha, below = self._step_alphas(index, sample)
            eps = (eps_start + self._epsilon(model_output, sample, below)) / 2
            self._old_eps.append(eps_start)
            return _output(self._prev(start, eps, alpha, below), return_dict)
        alpha, below, index = self._alphas(timestep)
        alpha, below = alpha.to(sample), below.to(sample)
        eps = self._epsilon(model_output, sample, alpha)
        if not self._old_eps:
            self._warm_up = (sample, eps, index)
            return _output(self._prev(sample, eps, alpha, below), return_dict)
        combined = _adams_bashforth(eps, self._old_eps)
        self._old_eps = [*self._old_eps, eps][-3:]
        return _output(self._prev(sample, combined, alpha, below), return_dict)

    def _step_alphas(self, index: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, below, _ = self._alphas(int(self._levels[index]))
        return alpha.to(like), below.to(like)


def _adams_bashforth(eps: torch.Tensor, old: list[torch.Tensor]) -> torch.Tensor:
    """A1111's pseudo linear multistep combination of this step's noise and the last ones."""
    if len(old) == 1:
        return (3 * eps - old[-1]) / 2
    if len(old) == 2:
        return (23 * eps - 16 * old[-1] + 5 * old[-2]) / 12
    return (55 * eps - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24


def timestep_mixin(sampler: str) -> type | None:
    """The A1111 stepping for a timestep sampler, None for those diffusers steps its own way
    (UniPC, LCM)."""
    return {"DDIM": A1111DDIM, "PLMS": A1111PLMS}.get(sampler)


def start_at(scheduler: Any, t_enc: int | None) -> None:
    """Tell an A1111 timestep scheduler where img2img starts; others take nothing."""
    if isinstance(scheduler, A1111Timesteps):
        scheduler.start_at(t_enc)

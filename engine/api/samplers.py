"""A1111 sampler and schedule-type names mapped to diffusers schedulers.

A1111 1.9+ names a sampler and a schedule type separately (`Sampler: DPM++ 2M, Schedule
type: Karras`); older versions wrote one combined name (`DPM++ 2M Karras`), which still
reads here as the pair. Names only here, no torch: the engine builds the scheduler from the
loaded pipeline's own config on its own thread (engine/pipelines/txt2img.py) and gives it A1111's
sigmas (engine/pipelines/sigmas.py).

The table follows A1111's modules/sd_samplers_kdiffusion.py (`samplers_k_diffusion`, v1.9+):
each sampler's "Automatic" schedule and whether it discards the next-to-last sigma; the
timestep samplers (DDIM, PLMS, UniPC, LCM: modules/sd_samplers_timesteps.py) take no schedule
type. Image-conditioned jobs run the steps A1111's `sample_img2img` runs (`img2img_steps`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

AUTOMATIC = "Automatic"
# A1111's modules/sd_schedulers.py labels of the schedules we reproduce exactly.
SCHEDULES = (AUTOMATIC, "Uniform", "Karras", "Exponential", "SGM Uniform")
# A1111 labels we cannot reproduce, named in the refusal rather than run as something else.
UNAVAILABLE_SCHEDULES = (
    "Polyexponential",
    "KL Optimal",
    "Align Your Steps",
    "Simple",
    "Normal",
    "DDIM",
    "Beta",
)
_SCHEDULE_ALIASES = {"sgmuniform": "SGM Uniform", "sgm_uniform": "SGM Uniform"}


@dataclass(frozen=True, slots=True)
class SamplerSpec:
    scheduler: str
    options: dict[str, Any] = field(default_factory=dict)
    # What A1111's "Automatic" means for it (its `scheduler` option). Without one A1111 keeps
    # "Automatic" (written so) and runs k-diffusion's own discretization, i.e. Uniform.
    automatic: str = AUTOMATIC
    # A1111's `discard_next_to_last_sigma`: run steps+1 sigmas and drop the penultimate one.
    discard_penultimate: bool = False
    # The schedules this scheduler can be given exactly; timestep samplers take none.
    schedules: tuple[str, ...] = SCHEDULES
    # A note for the member where we only approximate A1111 (named in the refusal list).
    note: str = ""
    # Its step noise is k-diffusion's Brownian tree (A1111's `brownian_noise` samplers).
    brownian: bool = False


# A zero final sigma requires a lower-order last step; diffusers warns and switches otherwise.
_ZERO_END = {"final_sigmas_type": "zero"}
_SDE = {"algorithm_type": "sde-dpmsolver++", **_ZERO_END}
_TIMESTEP = (AUTOMATIC,)
# DDIM and PLMS step on A1111's own timesteps (engine/pipelines/timestep_samplers.py); diffusers'
# "leading" spacing with offset 1, the nearest of its own, is what their base classes lay out.
_LEADING = {"timestep_spacing": "leading", "steps_offset": 1}

SAMPLERS: dict[str, SamplerSpec] = {
    "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler"),
    "Euler": SamplerSpec("EulerDiscreteScheduler"),
    "LMS": SamplerSpec("LMSDiscreteScheduler"),
    "Heun": SamplerSpec("HeunDiscreteScheduler"),
    "DPM2": SamplerSpec("KDPM2DiscreteScheduler", automatic="Karras", discard_penultimate=True),
    "DPM2 a": SamplerSpec(
        "KDPM2AncestralDiscreteScheduler", automatic="Karras", discard_penultimate=True
    ),
    "DPM++ 2M": SamplerSpec("DPMSolverMultistepScheduler", _ZERO_END, automatic="Karras"),
    # The SDE samplers draw their step noise as A1111 does: k-diffusion's Brownian tree, one
    # per image, seeded with the image's seed (engine/pipelines/brownian.py).
    "DPM++ SDE": SamplerSpec("DPMSolverSDEScheduler", automatic="Karras", brownian=True),
    "DPM++ 2M SDE": SamplerSpec(
        "DPMSolverMultistepScheduler", _SDE, automatic="Exponential", brownian=True
    ),
    "DPM++ 2M SDE Heun": SamplerSpec(
        "DPMSolverMultistepScheduler",
        {**_SDE, "solver_type": "heun"},
        automatic="Exponential",
        brownian=True,
    ),
    # k-diffusion's 3M takes its second step with the Heun-type coefficient and never lowers
    # its order before the last step (diffusers does below 15 steps unless told not to).
    "DPM++ 3M SDE": SamplerSpec(
        "DPMSolverMultistepScheduler",
        {**_SDE, "solver_order": 3, "solver_type": "heun", "lower_order_final": False},
        automatic="Exponential",
        discard_penultimate=True,
        brownian=True,
    ),
    "DDIM": SamplerSpec("DDIMScheduler", _LEADING, schedules=_TIMESTEP),
    # A1111's name for diffusers' PNDM without its Runge-Kutta warm-up steps.
    "PLMS": SamplerSpec("PNDMScheduler", {**_LEADING, "skip_prk_steps": True}, schedules=_TIMESTEP),
    "UniPC": SamplerSpec("UniPCMultistepScheduler", schedules=_TIMESTEP),
    "LCM": SamplerSpec("LCMScheduler", schedules=_TIMESTEP),
}

# A1111's timestep samplers that are stepped exactly as A1111 steps them
# (engine/pipelines/timestep_samplers.py); UniPC and LCM keep diffusers' stepping.
A1111_TIMESTEP_SAMPLERS = ("DDIM", "PLMS")

# Names earlier versions of this bot stored (jobs, preferences, server defaults).
SAMPLER_ALIASES = {"PNDM": "PLMS"}

# A1111 samplers diffusers has no scheduler for: refused by name, never run as another.
UNAVAILABLE_SAMPLERS = {
    "DPM++ 2S a": "diffusers has no ancestral single-step DPM++ solver",
    "Restart": "diffusers has no Restart sampler",
    "DDIM CFG++": "diffusers has no CFG++ variant of DDIM",
    "DPM fast": "diffusers has no DPM-Solver fast sampler",
    "DPM adaptive": "diffusers has no adaptive DPM-Solver sampler",
    "HeunPP2": "diffusers has no Heun++ sampler",
    "IPNDM": "not offered here",
    "IPNDM_V": "not offered here",
    "DEIS": "not offered here",
}

DEFAULT_SAMPLER = "Euler a"


def sampler_names() -> list[str]:
    return list(SAMPLERS)


def canonical_schedule(name: str) -> str:
    """A1111's label for a schedule type however it was spelled (`karras`, `SGMUniform`)."""
    folded = name.strip().lower()
    for label in (*SCHEDULES, *UNAVAILABLE_SCHEDULES):
        if label.lower() == folded:
            return label
    return _SCHEDULE_ALIASES.get(folded, name.strip())


def split_sampler(name: str, schedule: str = AUTOMATIC) -> tuple[str, str]:
    """(sampler, schedule) from a name that may carry its schedule (`DPM++ 2M Karras`, as
    A1111 before 1.9 and this bot's stored jobs wrote it). An explicit schedule wins."""
    name = SAMPLER_ALIASES.get(name, name)
    schedule = canonical_schedule(schedule) if schedule else AUTOMATIC
    if name in SAMPLERS or name in UNAVAILABLE_SAMPLERS:
        return name, schedule
    for label in (*SCHEDULES, *UNAVAILABLE_SCHEDULES):
        base = name.removesuffix(" " + label)
        if base != name and (base in SAMPLERS or base in UNAVAILABLE_SAMPLERS):
            base = SAMPLER_ALIASES.get(base, base)
            return base, label if schedule == AUTOMATIC else schedule
    return name, schedule


def resolved_schedule(sampler: str, schedule: str) -> str:
    """The schedule that actually runs: "Automatic" is the sampler's own (A1111's
    KDiffusionSampler.get_sigmas)."""
    if schedule == AUTOMATIC and sampler in SAMPLERS:
        return SAMPLERS[sampler].automatic
    return schedule


def img2img_t_enc(steps: int, denoise: float) -> int:
    """A1111's t_enc for an image-conditioned job (sd_samplers_common.setup_img2img_steps, its
    default "img2img_fix_steps" off): the schedule stays `steps` long and the run starts
    t_enc + 1 sigmas from its end (k-diffusion samplers) or at timestep number t_enc (DDIM,
    PLMS)."""
    return int(min(denoise, 0.999) * steps)


def timestep_img2img_start(steps: int, denoise: float) -> int | None:
    """The t_enc our DDIM and PLMS start img2img from, None for a schedule too short for it.

    A1111 runs t_enc - 1 steps, so below t_enc 2 it returns the noised image undenoised; here
    such a job takes one step (t_enc 2). Below 3 steps every run is the whole short schedule.
    """
    if steps < 3:
        return None
    return max(img2img_t_enc(steps, denoise), 2)


def flow_img2img_steps(steps: int, denoise: float) -> int:
    """The steps diffusers' SD 3 and FLUX img2img and inpaint pipelines run at `strength`
    `denoise` (their `get_timesteps`): the schedule stays `steps` long and the run skips its
    first int(steps - steps * strength) entries. A1111 has no FLUX; this is diffusers' rule,
    computed with the same float operations, so it is always the count the pipeline runs
    (about ceil(steps * strength): 28 steps at 0.75 run 21, at 0.7 run 20; float rounding
    included: 25 at 0.56 run 15)."""
    if denoise <= 0:
        return 0
    init_timestep = min(steps * denoise, steps)
    return steps - int(max(steps - init_timestep, 0))


def img2img_steps(sampler: str, steps: int, denoise: float, *, flow: bool = False) -> int:
    """The sampler steps an image-conditioned job runs at `denoise`, A1111's count: 0 keeps the
    image; t_enc + 1 for the k-diffusion samplers; t_enc - 1 for DDIM and PLMS (PLMS's first
    step asks the model twice); diffusers' int(steps * denoise) for UniPC and LCM, which
    A1111 steps its own way; diffusers' own rule on the flow-matching families (`flow`:
    `flow_img2img_steps`). What progress counts and what a job is priced by."""
    if denoise <= 0:
        return 0
    if flow:
        return flow_img2img_steps(steps, denoise)
    sampler = split_sampler(sampler)[0]
    if sampler in A1111_TIMESTEP_SAMPLERS:
        start = timestep_img2img_start(steps, denoise)
        return 1 if start is None else start - 1
    spec = SAMPLERS.get(sampler)
    if spec is not None and spec.schedules != _TIMESTEP:
        return img2img_t_enc(steps, denoise) + 1
    return max(1, min(int(steps * denoise), steps))


def sampler_problem(sampler: str, schedule: str) -> str | None:
    """A sentence naming why this pair cannot run here, or None when it can."""
    if sampler in UNAVAILABLE_SAMPLERS:
        return (
            f"Sampler {sampler} is not available here ({UNAVAILABLE_SAMPLERS[sampler]}). "
            f"Samplers: {', '.join(SAMPLERS)}."
        )
    spec = SAMPLERS.get(sampler)
    if spec is None:
        return f"Unknown sampler {sampler!r}. Samplers: {', '.join(SAMPLERS)}."
    if schedule in UNAVAILABLE_SCHEDULES:
        return f"Schedule type {schedule} is not available here. Schedules: {', '.join(SCHEDULES)}."
    if schedule not in SCHEDULES:
        return f"Unknown schedule type {schedule!r}. Schedules: {', '.join(SCHEDULES)}."
    if schedule not in spec.schedules:
        return (
            f"{sampler} takes no schedule type in A1111 (it steps on timesteps); "
            f"leave the schedule on {AUTOMATIC}."
        )
    return None

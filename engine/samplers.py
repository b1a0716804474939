"""A1111 sampler names mapped to diffusers schedulers.

The table follows the A1111/k-diffusion column of diffusers' scheduler overview
(docs: "Schedulers" > "A1111 / k-diffusion"). Names only here; the engine builds the
scheduler from the loaded pipeline's own config, on its own thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class SamplerSpec:
    scheduler: str
    options: dict[str, Any] = field(default_factory=dict)


_KARRAS = {"use_karras_sigmas": True}
# A zero final sigma requires a lower-order last step; diffusers warns and switches otherwise.
_SINGLESTEP = {"lower_order_final": True}

SAMPLERS: dict[str, SamplerSpec] = {
    "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler"),
    "Euler": SamplerSpec("EulerDiscreteScheduler"),
    "Euler Karras": SamplerSpec("EulerDiscreteScheduler", _KARRAS),
    "LMS": SamplerSpec("LMSDiscreteScheduler"),
    "LMS Karras": SamplerSpec("LMSDiscreteScheduler", _KARRAS),
    "Heun": SamplerSpec("HeunDiscreteScheduler"),
    "Heun Karras": SamplerSpec("HeunDiscreteScheduler", _KARRAS),
    "DPM2": SamplerSpec("KDPM2DiscreteScheduler"),
    "DPM2 Karras": SamplerSpec("KDPM2DiscreteScheduler", _KARRAS),
    "DPM2 a": SamplerSpec("KDPM2AncestralDiscreteScheduler"),
    "DPM2 a Karras": SamplerSpec("KDPM2AncestralDiscreteScheduler", _KARRAS),
    "DPM++ 2M": SamplerSpec("DPMSolverMultistepScheduler"),
    "DPM++ 2M Karras": SamplerSpec("DPMSolverMultistepScheduler", _KARRAS),
    "DPM++ 2M SDE": SamplerSpec(
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}
    ),
    "DPM++ 2M SDE Karras": SamplerSpec(
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", **_KARRAS}
    ),
    # diffusers' table maps these to the single-step solver. DPMSolverSDEScheduler is closer
    # to k-diffusion but needs torchsde and draws its noise outside the seeded generator.
    "DPM++ SDE": SamplerSpec("DPMSolverSinglestepScheduler", _SINGLESTEP),
    "DPM++ SDE Karras": SamplerSpec("DPMSolverSinglestepScheduler", {**_SINGLESTEP, **_KARRAS}),
    "DDIM": SamplerSpec("DDIMScheduler"),
    "PNDM": SamplerSpec("PNDMScheduler"),
    "UniPC": SamplerSpec("UniPCMultistepScheduler"),
    "LCM": SamplerSpec("LCMScheduler"),
}

DEFAULT_SAMPLER = "Euler a"


def sampler_names() -> list[str]:
    return list(SAMPLERS)

"""A1111's classifier-free guidance below a CFG scale of 1, for one pipeline call.

A1111's CFGDenoiser runs the negative prompt at every scale and combines
`uncond + cfg * (cond - uncond)` (its only skips, "skip early CFG" and NGMS, are settings that
are off by default). diffusers skips the negative pass at a scale of 1 or less and takes the
conditional prediction alone. At exactly 1 that is A1111's formula without the extra model
rows; below 1 it is not: A1111's image leans toward the negative prompt (at 0 it is the
negative prompt's image), while diffusers' does not change with the scale at all.

So below 1 the pipeline is called with a scale that turns its guidance on, and a forward hook
on the UNet moves the conditional rows toward the unconditional ones, so that diffusers'
`uncond + scale * (cond' - uncond)` is A1111's `uncond + cfg * (cond - uncond)`. Engine
thread only: the hook lives on the shared UNet for the call and is removed after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

# Any scale above 1 turns diffusers' guidance on; the hook makes it the job's.
GUIDED_SCALE = 2.0


@contextmanager
def a1111_guidance(pipe: Any, cfg: float) -> Iterator[float]:
    """The guidance scale to call `pipe` with for A1111's CFG at `cfg` (the scale itself from 1
    up, with nothing installed)."""
    if cfg >= 1:
        yield cfg
        return
    ratio = cfg / GUIDED_SCALE

    def rescale(module: Any, args: tuple[Any, ...], output: Any) -> Any:
        if not pipe.do_classifier_free_guidance:  # a guidance-distilled UNet (LCM) runs no CFG
            return output
        out = output[0]
        uncond, cond = out.chunk(2)
        folded = torch.cat([uncond, uncond + (cond - uncond) * ratio])
        return (folded, *output[1:])

    # After any other forward hook of the call (composable guidance folds its sub-prompts
    # into diffusers' [negative rows; positive rows] first).
    handle = pipe.unet.register_forward_hook(rescale)
    try:
        yield GUIDED_SCALE
    finally:
        handle.remove()

"""Memory modes: how much of a model sits on the GPU while it works. No torch here, so
settings, `doctor` and the tests of `auto`'s choice import it on any machine.

The modes follow A1111's `--medvram`/`--lowvram` and diffusers' offloading guide
(https://huggingface.co/docs/diffusers/optimization/memory):

- `high`: every model of the pipeline resident on the GPU (fastest);
- `medium`: diffusers' model CPU offload, each whole model (text encoder, UNet, VAE) moved
  to the GPU only while it runs, and the VAE decoding one image at a time (slicing);
- `low`: sequential CPU offload, layer by layer (slowest, for 4-6 GB cards), attention
  computed in slices and the VAE decoded in tiles.

`auto` picks from the card's total memory and the model's family, once per model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from engine.api.specs import NATIVE_SIZE, ModelFamily

MemoryMode = Literal["high", "medium", "low"]
MemorySetting = Literal["auto", "high", "medium", "low"]
MEMORY_MODES: tuple[MemoryMode, ...] = get_args(MemoryMode)
# Lower first: the order an out-of-memory batch walks down.
_LOWER: dict[MemoryMode, MemoryMode | None] = {"high": "medium", "medium": "low", "low": None}

GIB = 1024**3

# The card memory (GiB) from which a family runs in each mode, resident weights in fp16
# plus the activations of a batch of one at the native size, with headroom for the
# allocator: SD 1.5 needs ~2.5 GB resident and ~4 GB at 512x512; SDXL ~7 GB resident and
# ~11 GB at 1024x1024 (diffusers' memory guide; A1111's wiki on --medvram for SDXL on 8 GB).
# Set a little under the labels of the cards they are meant for: a "12 GB" card reports
# about 11.8 GiB.
# SD 3.5 Large (the family's largest: an 8.1B transformer, ~16.3 GB in bf16, T5-XXL ~9.5 GB,
# both CLIPs ~1.6 GB) needs ~28 GB resident and ~20 GB with only the transformer on the
# card; FLUX.1 (a 12B transformer, ~23.8 GB, and the same T5) ~34 GB and ~27 GB, so a
# 24 GB card runs it in `low`. Quantized (NF4 or GGUF: "quantize"/"transformer" in
# SDBOT_MODELS) FLUX's transformer is 6-12 GB: set its "memory" to medium there.
_HIGH_FROM_GIB: dict[ModelFamily, float] = {
    "sd1": 5.5,
    "sd2": 7.0,
    "sdxl": 11.0,
    "sd3": 30.0,
    "flux": 37.0,
    "flux-schnell": 37.0,
}
_MEDIUM_FROM_GIB: dict[ModelFamily, float] = {
    "sd1": 2.5,
    "sd2": 3.5,
    "sdxl": 5.5,
    "sd3": 20.0,
    "flux": 27.0,
    "flux-schnell": 27.0,
}


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """What a mode turns on. Slicing and tiling change no result beyond float noise."""

    mode: MemoryMode
    model_offload: bool = False
    sequential_offload: bool = False
    vae_slicing: bool = False
    attention_slicing: bool = False
    # Training: recompute activations in the backward pass instead of keeping them.
    gradient_checkpointing: bool = False

    @property
    def offloaded(self) -> bool:
        return self.model_offload or self.sequential_offload


def plan_for(mode: MemoryMode) -> MemoryPlan:
    if mode == "high":
        return MemoryPlan("high")
    if mode == "medium":
        return MemoryPlan(
            "medium", model_offload=True, vae_slicing=True, gradient_checkpointing=True
        )
    return MemoryPlan(
        "low",
        sequential_offload=True,
        vae_slicing=True,
        attention_slicing=True,
        gradient_checkpointing=True,
    )


def auto_mode(family: ModelFamily, total_bytes: int | None) -> MemoryMode:
    """The mode `auto` picks on a card with `total_bytes` of memory; None (no CUDA card: the
    CPU or Apple's unified memory) keeps everything where it is, since offloading to the
    CPU saves nothing there."""
    if total_bytes is None:
        return "high"
    gib = total_bytes / GIB
    if gib >= _HIGH_FROM_GIB[family]:
        return "high"
    if gib >= _MEDIUM_FROM_GIB[family]:
        return "medium"
    return "low"


def resolve_mode(
    setting: MemorySetting, family: ModelFamily, total_bytes: int | None
) -> MemoryMode:
    """The owner's mode, or `auto`'s choice. Offloading needs a CUDA card: elsewhere a
    configured `medium`/`low` still slices and tiles, and loads nothing twice."""
    if setting == "auto":
        return auto_mode(family, total_bytes)
    return setting


def lower_mode(mode: MemoryMode) -> MemoryMode | None:
    """The next mode down after an out-of-memory error; None at `low`."""
    return _LOWER[mode]


# What batching costs, for `batch_images`: the weights that stay on the card while the UNet
# runs (fp16: SD 1.5's UNet, text encoder and VAE ~2.6 GB, SDXL's ~7 GB; offloaded, the UNet
# alone), one decode's peak (SDXL's VAE decodes in float32), and each image's activations at
# the native size with CFG (diffusers' SDPA). Estimates from diffusers' published figures,
# rounded up; a batch that does not fit after all is split by the out-of-memory retry.
# SD 3 and FLUX (bf16, from the parameter counts above; the transformer stands for the
# UNet): a 1024x1024 image is 4096 tokens plus the prompt's (333 for SD 3, 512 for FLUX
# dev), SD 3 with CFG's two passes, FLUX in one; their 16-channel VAE decodes like SDXL's.
_RESIDENT_GIB: dict[ModelFamily, float] = {
    "sd1": 2.6,
    "sd2": 2.9,
    "sdxl": 7.0,
    "sd3": 27.5,
    "flux": 34.0,
    "flux-schnell": 34.0,
}
_UNET_GIB: dict[ModelFamily, float] = {
    "sd1": 1.7,
    "sd2": 1.8,
    "sdxl": 5.1,
    "sd3": 16.3,
    "flux": 23.8,
    "flux-schnell": 23.8,
}
_DECODE_GIB: dict[ModelFamily, float] = {
    "sd1": 1.0,
    "sd2": 1.5,
    "sdxl": 3.5,
    "sd3": 3.0,
    "flux": 3.0,
    "flux-schnell": 3.0,
}
_PER_IMAGE_GIB: dict[ModelFamily, float] = {
    "sd1": 0.5,
    "sd2": 0.9,
    "sdxl": 2.5,
    "sd3": 1.5,
    "flux": 1.2,
    "flux-schnell": 1.2,
}
MAX_BATCH_IMAGES = 16
_USABLE = 0.9  # the allocator's own overhead and fragmentation


def batch_images(
    family: ModelFamily, mode: MemoryMode, total_bytes: int | None, width: int, height: int
) -> int:
    """How many images of this size one UNet batch can hold on this card; 1 without a
    CUDA card (a CPU gains little from batching) or in `low` (layer by layer)."""
    if total_bytes is None or mode == "low":
        return 1
    resident = _RESIDENT_GIB[family] if mode == "high" else _UNET_GIB[family]
    native_w, native_h = NATIVE_SIZE[family]
    per_image = _PER_IMAGE_GIB[family] * (width * height) / (native_w * native_h)
    free = total_bytes / GIB * _USABLE - resident - _DECODE_GIB[family]
    return max(1, min(MAX_BATCH_IMAGES, int(free / per_image)))

"""What a model is, as plain data: no torch here, so settings and cogs can import it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ModelFamily = Literal["sd1", "sd2", "sdxl"]

# Keys that only an SDXL or an SD2 single-file checkpoint has (A1111's layout): the second
# text encoder of SDXL, SD2's OpenCLIP in place of CLIP ViT-L.
_SDXL_KEY = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"
_SD2_KEY = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"


# `owner/name` with huggingface_hub's characters.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]$")


def looks_like_hub_id(source: str) -> bool:
    """`owner/name` that is no path on this disk: what diffusers would look up on the Hub."""
    return bool(_HUB_ID.match(source)) and not Path(source).expanduser().exists()


def family_from_keys(keys: set[str]) -> ModelFamily:
    """A single-file checkpoint's family from its tensors' names (no tensor loaded)."""
    if _SDXL_KEY in keys:
        return "sdxl"
    if _SD2_KEY in keys:
        return "sd2"
    return "sd1"


# Native resolution of each family: the size a model was trained at, used when the
# member asks for none, and the base of the default pixel cap.
NATIVE_SIZE: dict[ModelFamily, tuple[int, int]] = {
    "sd1": (512, 512),
    "sd2": (768, 768),
    "sdxl": (1024, 1024),
}

# Past ~1.5x the native side length SD models tile their subject and VRAM use climbs
# quadratically, so the default cap is (1.5 * native) ** 2 pixels.
DEFAULT_CAP_FACTOR = 2.25

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A named model: where it comes from and the limits members get with it."""

    name: str
    source: str
    family: ModelFamily | None = None
    config: str | None = None
    default_size: tuple[int, int] | None = None
    max_pixels: int | None = None
    note: str = ""
    # A dedicated inpainting checkpoint (9 UNet input channels) used by /inpaint and
    # /outpaint; without one the model itself inpaints.
    inpaint_source: str | None = None
    # ControlNet models for this base model, by control type (canny, depth, ...).
    controlnets: dict[str, str] = field(default_factory=dict)
    # A VAE to decode with (Hub id, folder or single file), e.g. an fp16-safe SDXL VAE.
    vae: str | None = None
    # This model's memory mode (engine/api/memory.py); None follows SDBOT_MEMORY.
    memory: str | None = None

    @property
    def is_single_file(self) -> bool:
        return self.source.lower().endswith(SINGLE_FILE_SUFFIXES)

    def guessed_family(self) -> ModelFamily:
        """The family before loading: configured, or guessed from the source's name."""
        if self.family is not None:
            return self.family
        lowered = self.source.lower()
        if "xl" in lowered:
            return "sdxl"
        if "stable-diffusion-2" in lowered or "sd2" in lowered or "v2-" in lowered:
            return "sd2"
        return "sd1"

    def size_default(self) -> tuple[int, int]:
        return self.default_size or NATIVE_SIZE[self.guessed_family()]

    def pixel_cap(self) -> int:
        if self.max_pixels is not None:
            return self.max_pixels
        width, height = NATIVE_SIZE[self.guessed_family()]
        return int(width * height * DEFAULT_CAP_FACTOR)

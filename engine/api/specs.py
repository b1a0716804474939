"""What a model is, as plain data: no torch here, so settings and cogs can import it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from engine.api.families import (
    FAMILIES,
    Family,
    ModelFamily,
    family_from_keys,
    family_from_name,
    family_on_disk,
)

__all__ = [
    "DEFAULT_CAP_FACTOR",
    "NATIVE_SIZE",
    "SINGLE_FILE_SUFFIXES",
    "ModelFamily",
    "ModelSpec",
    "Quantization",
    "family_from_keys",
    "looks_like_hub_id",
]

# How a model's transformer may be quantized as it loads (bitsandbytes, CUDA only).
Quantization = Literal["nf4"]

# `owner/name` with huggingface_hub's characters.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]$")


def looks_like_hub_id(source: str) -> bool:
    """`owner/name` that is no path on this disk: what diffusers would look up on the Hub."""
    return bool(_HUB_ID.match(source)) and not Path(source).expanduser().exists()


# Native resolution of each family: the size a model was trained at, used when the
# member asks for none, and the base of the default pixel cap.
NATIVE_SIZE: dict[ModelFamily, tuple[int, int]] = {
    name: row.native_size for name, row in FAMILIES.items()
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
    # An InstructPix2Pix UNet (8 input channels: latents and the picture's) that /edit runs
    # with this model's text encoder and VAE (engine/api/edits.py); without one, no /edit.
    edit_source: str | None = None
    # ControlNet models for this base model, by control type (canny, depth, ...).
    controlnets: dict[str, str] = field(default_factory=dict)
    # A VAE to decode with (Hub id, folder or single file), e.g. an fp16-safe SDXL VAE.
    vae: str | None = None
    # This model's memory mode (engine/api/memory.py); None follows SDBOT_MEMORY.
    memory: str | None = None
    # SD 3 / FLUX: a single file (.safetensors, or a GGUF quantization) that replaces the
    # model's transformer, and bitsandbytes quantization of the transformer as it loads.
    transformer: str | None = None
    quantize: Quantization | None = None
    # What a job gets when the member says nothing; None: the family's (engine/api/families.py).
    default_steps: int | None = None
    default_cfg: float | None = None
    # Image prompts (engine/api/image_prompts.py): the IP-Adapter made for this model's
    # family (weights file or folder, here or on the Hub) and its image encoder's folder.
    ip_adapter: str | None = None
    ip_adapter_encoder: str | None = None

    @property
    def is_single_file(self) -> bool:
        return self.source.lower().endswith(SINGLE_FILE_SUFFIXES)

    def guessed_family(self) -> ModelFamily:
        """The family before loading: configured, else as a local folder's or file's
        contents say, else guessed from the source's name (a Hub id, a `.ckpt`)."""
        if self.family is not None:
            return self.family
        return family_on_disk(self.source) or family_from_name(self.source)

    def family_row(self) -> Family:
        return FAMILIES[self.guessed_family()]

    def size_default(self) -> tuple[int, int]:
        return self.default_size or NATIVE_SIZE[self.guessed_family()]

    def steps_default(self) -> int:
        return self.default_steps if self.default_steps is not None else self.family_row().steps

    def cfg_default(self) -> float:
        return self.default_cfg if self.default_cfg is not None else self.family_row().cfg

    def pixel_cap(self) -> int:
        if self.max_pixels is not None:
            return self.max_pixels
        width, height = NATIVE_SIZE[self.guessed_family()]
        return int(width * height * DEFAULT_CAP_FACTOR)

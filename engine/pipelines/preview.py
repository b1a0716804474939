"""Cheap progress previews straight from the latents: a fixed linear map, no VAE.

The latent-to-RGB factors are the ones ComfyUI ships for its "latent2rgb" previews
(comfy/latent_formats.py); they need no weights and cost one tiny matmul.
"""

from __future__ import annotations

import io
import math

import torch
from PIL import Image

from engine.api.specs import ModelFamily

_FACTORS: dict[ModelFamily, list[list[float]]] = {
    "sd1": [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ],
    "sdxl": [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ],
}
_FACTORS["sd2"] = _FACTORS["sd1"]  # SD2 kept SD1's VAE
_BIAS: dict[ModelFamily, list[float]] = {
    "sd1": [0.0, 0.0, 0.0],
    "sd2": [0.0, 0.0, 0.0],
    "sdxl": [0.1084, -0.0175, -0.0011],
}

# Previews are scaled to this longest side: small enough to upload every few seconds,
# large enough to see the composition forming.
PREVIEW_SIDE = 256


def latents_to_rgb(latents: torch.Tensor, family: ModelFamily) -> torch.Tensor:
    """(N, 4, h, w) latents to (N, h, w, 3) uint8 images."""
    factors = torch.tensor(_FACTORS[family], dtype=torch.float32)
    bias = torch.tensor(_BIAS[family], dtype=torch.float32)
    rgb = torch.einsum("nchw,cr->nhwr", latents.detach().float().cpu(), factors) + bias
    return ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8)


def preview_png(latents: torch.Tensor, family: ModelFamily) -> bytes:
    """A small PNG grid of the given latents (a job's images side by side)."""
    frames = [Image.fromarray(frame.numpy()) for frame in latents_to_rgb(latents, family)]
    columns = math.ceil(math.sqrt(len(frames)))
    rows = math.ceil(len(frames) / columns)
    width, height = frames[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, frame in enumerate(frames):
        grid.paste(frame, ((index % columns) * width, (index // columns) * height))
    scale = PREVIEW_SIDE / max(grid.size)
    if scale != 1:
        # Latent pixels are blocky anyway: nearest keeps them crisp and costs nothing.
        grid = grid.resize(
            (max(1, round(grid.width * scale)), max(1, round(grid.height * scale))),
            Image.Resampling.NEAREST,
        )
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return buffer.getvalue()

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
# SD 3's and FLUX's 16-channel VAEs (ComfyUI's SD3 and Flux latent formats), applied as
# there to the latents the transformer works on (FLUX's unpacked from its 2x2 patches).
_FACTORS["sd3"] = [
    [-0.0922, -0.0175, 0.0749],
    [0.0311, 0.0633, 0.0954],
    [0.1994, 0.0927, 0.0458],
    [0.0856, 0.0339, 0.0902],
    [0.0587, 0.0272, -0.0496],
    [-0.0006, 0.1104, 0.0309],
    [0.0978, 0.0306, 0.0427],
    [-0.0042, 0.1038, 0.1358],
    [-0.0194, 0.0020, 0.0669],
    [-0.0488, 0.0130, -0.0268],
    [0.0922, 0.0988, 0.0951],
    [-0.0278, 0.0524, -0.0542],
    [0.0332, 0.0456, 0.0895],
    [-0.0069, -0.0030, -0.0810],
    [-0.0596, -0.0465, -0.0293],
    [-0.1448, -0.1463, -0.1189],
]
_FACTORS["flux"] = [
    [-0.0346, 0.0244, 0.0681],
    [0.0034, 0.0210, 0.0687],
    [0.0275, -0.0668, -0.0433],
    [-0.0174, 0.0160, 0.0617],
    [0.0859, 0.0721, 0.0329],
    [0.0004, 0.0383, 0.0115],
    [0.0405, 0.0861, 0.0915],
    [-0.0236, -0.0185, -0.0259],
    [-0.0245, 0.0250, 0.1180],
    [0.1008, 0.0755, -0.0421],
    [-0.0515, 0.0201, 0.0011],
    [0.0428, -0.0012, -0.0036],
    [0.0817, 0.0765, 0.0749],
    [-0.1264, -0.0522, -0.1103],
    [-0.0280, -0.0881, -0.0499],
    [-0.1262, -0.0982, -0.0778],
]
_FACTORS["flux-schnell"] = _FACTORS["flux"]  # one VAE for both
_BIAS: dict[ModelFamily, list[float]] = {
    "sd1": [0.0, 0.0, 0.0],
    "sd2": [0.0, 0.0, 0.0],
    "sdxl": [0.1084, -0.0175, -0.0011],
    "sd3": [0.2394, 0.2135, 0.1925],
    "flux": [-0.0329, -0.0718, -0.0851],
    "flux-schnell": [-0.0329, -0.0718, -0.0851],
}

# Previews are scaled to this longest side: small enough to upload every few seconds,
# large enough to see the composition forming.
PREVIEW_SIDE = 256


def latents_to_rgb(latents: torch.Tensor, family: ModelFamily) -> torch.Tensor:
    """(N, C, h, w) latents (C: 4, or 16 for SD 3 and FLUX) to (N, h, w, 3) uint8 images."""
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

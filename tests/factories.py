"""Parameters for tests: sensible values, each test overriding what it is about."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from engine.api.params import GenerationParams

STANDARD: dict[str, Any] = {
    "prompt": "a cat",
    "negative": "",
    "seed": 1,
    "steps": 20,
    "cfg": 7.0,
    "width": 512,
    "height": 512,
    "sampler": "Euler a",
    "count": 1,
    "model": "sd15",
}
# What the tiny test model runs in a fraction of a second.
TINY: dict[str, Any] = {**STANDARD, "steps": 3, "width": 64, "height": 64, "model": "tiny"}


def standard_params(**overrides: Any) -> GenerationParams:
    return GenerationParams(**{**STANDARD, **overrides})


def tiny_params(**overrides: Any) -> GenerationParams:
    return GenerationParams(**{**TINY, **overrides})


def photo(seed: int, size: int = 64) -> bytes:
    """A member's training photo: random colours, a PNG of `size` pixels a side."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

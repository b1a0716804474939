"""Parameters for tests: sensible values, each test overriding what it is about."""

from __future__ import annotations

from typing import Any

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

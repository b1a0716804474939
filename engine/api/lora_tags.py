"""A1111's LoRA tags in a prompt (`<lora:name:0.8>`), read as plain text.

No torch here: the bot resolves a prompt's tags when a job is submitted, on the event loop,
and must not import diffusers for it. engine/pipelines/lora.py applies the files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from engine.api.params import InvalidParams

# A1111's extra-network syntax is `<kind:arg1:arg2...>` (modules/extra_networks.py); `lyco`
# is its alias for LoRA. The first argument is the name, the second the multiplier.
_TAG_RE = re.compile(r"<(lora|lyco):([^>]*)>", re.IGNORECASE)
MAX_LORA_WEIGHT = 4.0


def parse_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Take `<lora:name:0.8>` / `<lora:name>` (weight 1.0) out of a prompt, as A1111 does.

    Returns the prompt without the tags (the commas and spaces they leave tidied) and
    (name, weight) in order of appearance, names as written (look them up with
    engine.api.training_params.sanitize_name). A1111's separate text-encoder/UNet multipliers
    (`<lora:name:0.8:0.5>`, `te=`, `unet=`) are not supported: the first weight applies to
    both, as in A1111 when only one is given. Raises InvalidParams for a weight that is not
    a number within +-MAX_LORA_WEIGHT.
    """
    found: list[tuple[str, float]] = []

    def take(match: re.Match[str]) -> str:
        items = match.group(2).split(":")
        name = items[0].strip()
        if not name:
            raise InvalidParams(f"{match.group(0)} names no LoRA.")
        found.append((name, _weight(items[1] if len(items) > 1 else "", match.group(0))))
        return ""

    stripped = _TAG_RE.sub(take, prompt)
    return tidy_prompt(stripped), found


def _weight(text: str, tag: str) -> float:
    if not text.strip():
        return 1.0
    try:
        value = float(text)
    except ValueError:
        raise InvalidParams(f"The weight in {tag} is not a number.") from None
    if not math.isfinite(value) or abs(value) > MAX_LORA_WEIGHT:
        raise InvalidParams(
            f"The weight in {tag} must be between -{MAX_LORA_WEIGHT:g} and {MAX_LORA_WEIGHT:g}."
        )
    return value


def tidy_prompt(text: str) -> str:
    """Collapse the doubled commas and spaces a removed tag leaves; newlines stay."""
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\s*,(?:\s*,)+", ",", text)
    text = re.sub(r"[ \t]+,", ",", text)
    return text.strip(" \t,")


def merged_weights(loras: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """One entry per LoRA: a LoRA named twice adds its weights (its deltas add up)."""
    totals: dict[str, float] = {}
    for name, weight in loras:
        totals[name] = totals.get(name, 0.0) + weight
    return list(totals.items())

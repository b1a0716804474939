"""/describe: four prompts in A1111's syntax for a picture, put together from what the
captioner said of it and how CLIP ranked the tag lists (engine/pipelines/describe.py).

Torch-free, so the prompts' shape is tested without a model. Each of the four starts from
a different caption, as Midjourney's four readings of a picture differ:

1. A1111's interrogate: the beam-search caption, then the best medium, movement and three
   flavours, plain.
2. Led by the medium: BLIP's caption continuing "<medium> of", with the movement and the
   three flavours emphasised by how clearly CLIP preferred each (the best at 1.3).
3. A sampled caption with CLIP's second choices: the next medium and movement and the
   fourth to sixth flavours.
4. Another sampled caption with the best medium and movement and six flavours, the first
   three emphasised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NOT_SET_UP = "/describe is not set up on this bot."
PROMPTS = 4
# The emphasis of the tag CLIP preferred most; the others scale down towards 1 with their
# probability, as A1111's "return ranks" option writes the scores into the prompt.
TOP_WEIGHT = 1.3
WEIGHT_STEP = 0.05
# BLIP trained on web captions says "arafed" (from "a rafed", an artefact of its data) where
# it sees a person or animal; the word means nothing to Stable Diffusion.
_BLIP_ARTEFACTS = re.compile(r"\bara+f+\w*\b\s*", re.IGNORECASE)
# Characters that are syntax in an A1111 prompt: written escaped, so a caption that holds
# them reads as words. A colon is dropped: "10:30" would read as a sub-prompt weight.
_A1111_SPECIAL = re.compile(r"([()\[\]\\])")
_SPACES = re.compile(r"\s+")

Ranked = tuple[tuple[str, float], ...]  # (tag, CLIP's probability), best first


@dataclass(frozen=True, slots=True)
class Reading:
    """What the models said of one picture: its captions and each tag list, ranked."""

    beam: str  # beam search, as A1111 captions
    medium_led: str  # continuing "<best medium> of"
    sampled: tuple[str, str]  # nucleus sampling, seeded by the picture
    mediums: Ranked
    movements: Ranked
    flavors: Ranked


def clean_caption(text: str) -> str:
    """A caption as prompt text: BLIP's artefacts out, A1111's syntax escaped, one line."""
    text = _BLIP_ARTEFACTS.sub("", text).replace(":", " ")
    text = _SPACES.sub(" ", text).strip(" ,")
    return _A1111_SPECIAL.sub(r"\\\1", text)


def weight_text(weight: float) -> str:
    """1.3 -> '1.3', 1.25 -> '1.25': as a member would write it."""
    return f"{weight:.2f}".rstrip("0").rstrip(".")


def emphasised(ranked: Ranked) -> list[str]:
    """`(tag:1.3)` for each: the best at TOP_WEIGHT, the others by their probability against
    the best's, in steps of WEIGHT_STEP; a tag whose weight rounds to 1 is written plain."""
    if not ranked:
        return []
    best = max(probability for _, probability in ranked) or 1.0
    written = []
    for tag, probability in ranked:
        raw = 1.0 + (TOP_WEIGHT - 1.0) * probability / best
        weight = round(round(raw / WEIGHT_STEP) * WEIGHT_STEP, 2)
        written.append(f"({tag}:{weight_text(weight)})" if weight > 1.0 else tag)
    return written


def _tags(ranked: Ranked, start: int, stop: int) -> list[str]:
    return [tag for tag, _ in ranked[start:stop]]


def _joined(*parts: str | list[str]) -> str:
    flat: list[str] = []
    for part in parts:
        flat.extend(part if isinstance(part, list) else [part])
    return ", ".join(piece for piece in flat if piece)


def four_prompts(reading: Reading) -> list[str]:
    """The four prompts (see the module's docstring). They differ whatever the captions say:
    each takes other tags from the lists, or the same tags emphasised otherwise."""
    mediums, movements, flavors = reading.mediums, reading.movements, reading.flavors
    # The medium-led caption names its medium already.
    second = _joined(clean_caption(reading.medium_led), emphasised(movements[:1] + flavors[:3]))
    prompts = [
        _joined(
            clean_caption(reading.beam),
            _tags(mediums, 0, 1),
            _tags(movements, 0, 1),
            _tags(flavors, 0, 3),
        ),
        second,
        _joined(
            clean_caption(reading.sampled[0]),
            _tags(mediums, 1, 2),
            _tags(movements, 1, 2),
            _tags(flavors, 3, 6),
        ),
        _joined(
            clean_caption(reading.sampled[1]),
            _tags(mediums, 0, 1),
            _tags(movements, 0, 1),
            emphasised(flavors[:3]),
            _tags(flavors, 3, 6),
        ),
    ]
    return prompts

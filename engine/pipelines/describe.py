"""/describe on the engine thread: a BLIP captioner and a CLIP ranker read a picture, as
A1111's interrogator does (modules/interrogate.py), and engine/api/describe.py writes the
four prompts.

BLIP (transformers' `BlipForConditionalGeneration`, SDBOT_CAPTIONER) captions the picture
three ways: beam search, continuing "<medium> of", and two nucleus samples drawn from a
seed made of the picture's pixels, so the same picture gets the same prompts. CLIP (a
`CLIPModel` with both towers, SDBOT_CLIP_RANKER) ranks each tag list by similarity to the
picture, A1111's way: the softmax of 100 times the cosine similarity. The lists are the text
files beside this module (one tag a line, no artists' names), read at first use; their
text embeddings are computed once and kept. Both models are loaded the first time a picture
is described and kept on the engine's device, as the safety checker is.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from PIL import Image

from engine.api.describe import NOT_SET_UP, Ranked, Reading, four_prompts
from engine.api.errors import EngineError
from engine.imaging.masks import flatten
from engine.pipelines.memory import freed_on_oom

log = logging.getLogger(__name__)

LOAD_FAILED = "The /describe models could not be loaded; the bot's log has the details."
CATEGORIES = ("mediums", "movements", "flavors")
# How many of each list the prompts use (engine/api/describe.py takes from these).
TOP = {"mediums": 2, "movements": 2, "flavors": 6}
# A1111's interrogator scales CLIP's cosine similarities by 100 before the softmax.
SIMILARITY_SCALE = 100.0
TEXT_CHUNK = 256  # tags encoded at once, the first time a list is used
# BLIP's decoding. Beam search as A1111 and clip-interrogator caption (3 beams); the
# repetition penalty keeps "a cat cat cat" out of the prompts.
CAPTION_TOKENS = {"max_new_tokens": 30, "min_new_tokens": 5, "repetition_penalty": 1.3}
BEAMS = 3
TOP_P = 0.9
# Larger pictures are shrunk first: BLIP sees 384 pixels a side and CLIP 224.
LONGEST_SIDE = 768


def picture_seed(image: Image.Image) -> int:
    """A seed from the picture's pixels (not its file): the same picture, the same prompts."""
    digest = hashlib.sha256(f"{image.size}".encode() + image.tobytes()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def read_picture(png: bytes) -> Image.Image:
    """The PNG the bot checked (engine/imaging/attachments.py), RGB, at most LONGEST_SIDE."""
    with Image.open(io.BytesIO(png)) as opened:
        image = flatten(opened.convert("RGBA") if opened.mode in ("P", "LA") else opened)
    image.thumbnail((LONGEST_SIDE, LONGEST_SIDE), Image.Resampling.LANCZOS)
    return image


def tag_list(category: str) -> tuple[str, ...]:
    """A shipped tag list: one tag a line, blank lines skipped."""
    text = (
        resources.files("engine.pipelines")
        .joinpath("tags", f"{category}.txt")
        .read_text(encoding="utf-8")
    )
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global generator seeded for the block and restored after it: transformers'
    sampling draws from it, and nothing else on the engine thread should notice."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield


def _inputs_on(inputs: Any, model: Any) -> dict[str, Any]:
    """A processor's tensors on the model's device; pixels in its dtype."""
    moved = {}
    for key, value in inputs.items():
        value = value.to(model.device)
        moved[key] = value.to(model.dtype) if key == "pixel_values" else value
    return moved


@dataclass(slots=True)
class Captioner:
    """BLIP for captions (image to text), from `source`."""

    source: str
    processor: Any
    model: Any

    def caption(self, image: Image.Image, prefix: str | None = None, **decoding: Any) -> list[str]:
        inputs = self.processor(images=image, text=prefix, return_tensors="pt")
        output = self.model.generate(**_inputs_on(inputs, self.model), **CAPTION_TOKENS, **decoding)
        return [
            text.strip() for text in self.processor.batch_decode(output, skip_special_tokens=True)
        ]

    def read(self, image: Image.Image, medium: str, seed: int) -> tuple[str, str, list[str]]:
        """The beam caption, the caption led by `medium`, and two sampled ones."""
        [beam] = self.caption(image, num_beams=BEAMS)
        [led] = self.caption(image, prefix=f"{medium} of", num_beams=BEAMS)
        with seeded(seed, self.model.device):
            sampled = self.caption(image, do_sample=True, top_p=TOP_P, num_return_sequences=2)
        return beam, led, sampled


def _features(output: Any) -> torch.Tensor:
    """CLIP's projected embedding, normalised: transformers 5 returns it as the pooled output
    of a model output, earlier versions as the tensor itself."""
    features = output.pooler_output if hasattr(output, "pooler_output") else output
    return torch.nn.functional.normalize(features.float(), dim=-1)


@dataclass(slots=True)
class Ranker:
    """CLIP with both towers, ranking tag lists against a picture, from `source`."""

    source: str
    processor: Any
    model: Any
    texts: dict[str, tuple[tuple[str, ...], torch.Tensor]] = field(default_factory=dict)

    def image_features(self, image: Image.Image) -> torch.Tensor:
        inputs = self.processor(images=image, return_tensors="pt")
        return _features(self.model.get_image_features(**_inputs_on(inputs, self.model)))

    def text_features(self, category: str) -> tuple[tuple[str, ...], torch.Tensor]:
        """A list's tags and their embeddings, computed the first time it is asked for."""
        if category not in self.texts:
            tags = tag_list(category)
            chunks = []
            for start in range(0, len(tags), TEXT_CHUNK):
                inputs = self.processor(
                    text=list(tags[start : start + TEXT_CHUNK]),
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                )
                chunks.append(
                    _features(self.model.get_text_features(**_inputs_on(inputs, self.model)))
                )
            self.texts[category] = (tags, torch.cat(chunks))
        return self.texts[category]

    def rank(self, image_features: torch.Tensor, category: str, top: int) -> Ranked:
        """The `top` tags of a list, best first, with their probabilities (A1111's rank)."""
        tags, features = self.text_features(category)
        similarity = (SIMILARITY_SCALE * image_features @ features.T).softmax(dim=-1)[0]
        probabilities, indices = similarity.topk(min(top, len(tags)))
        return tuple((tags[int(i)], float(p)) for p, i in zip(probabilities, indices, strict=True))


def _load(kind: str, source: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import (
        BlipForConditionalGeneration,
        BlipProcessor,
        CLIPModel,
        CLIPProcessor,
    )

    classes: dict[str, tuple[Any, Any]] = {
        "captioner": (BlipProcessor, BlipForConditionalGeneration),
        "ranker": (CLIPProcessor, CLIPModel),
    }
    processor_class, model_class = classes[kind]
    try:
        processor = processor_class.from_pretrained(source)
        model = model_class.from_pretrained(source)
    # Whatever the library raises (no such folder, not cached offline, another model) names
    # the owner's paths: the log gets it, the member a sentence.
    except Exception:
        setting = "SDBOT_CAPTIONER" if kind == "captioner" else "SDBOT_CLIP_RANKER"
        log.exception("the %s %s could not be loaded (%s)", kind, source, setting)
        raise EngineError(LOAD_FAILED) from None
    model.to(device=device, dtype=dtype).eval()
    return processor, model


def load_captioner(source: str, device: torch.device, dtype: torch.dtype) -> Captioner:
    return Captioner(source, *_load("captioner", source, device, dtype))


def load_ranker(source: str, device: torch.device, dtype: torch.dtype) -> Ranker:
    return Ranker(source, *_load("ranker", source, device, dtype))


class Describer:
    """The captioner and the ranker, loaded on the engine thread at the first /describe
    (from the engine's device and dtype settings) and kept."""

    def __init__(
        self, captioner: str | None, ranker: str | None, device: str = "auto", dtype: str = "auto"
    ) -> None:
        self.sources = (captioner, ranker)
        self.device_setting = device
        self.dtype_setting = dtype
        self._models: tuple[Captioner, Ranker] | None = None

    def models(self) -> tuple[Captioner, Ranker]:
        captioner, ranker = self.sources
        if not captioner or not ranker:
            raise EngineError(NOT_SET_UP)
        if self._models is None:
            from engine.pipelines.loading import pick_device, pick_dtype

            device = pick_device(self.device_setting)
            dtype = pick_dtype(self.dtype_setting, device)
            self._models = (
                load_captioner(captioner, device, dtype),
                load_ranker(ranker, device, dtype),
            )
        return self._models

    def describe(self, png: bytes) -> list[str]:
        """Four prompts for the picture; the same picture gets the same four."""
        captioner, ranker = self.models()
        image = read_picture(png)
        with freed_on_oom("a /describe"), torch.inference_mode():
            features = ranker.image_features(image)
            ranked = {name: ranker.rank(features, name, TOP[name]) for name in CATEGORIES}
            medium = ranked["mediums"][0][0]
            beam, led, sampled = captioner.read(image, medium, picture_seed(image))
        reading = Reading(
            beam,
            led,
            (sampled[0], sampled[1]),
            ranked["mediums"],
            ranked["movements"],
            ranked["flavors"],
        )
        return four_prompts(reading)

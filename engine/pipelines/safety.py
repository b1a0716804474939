"""Content safety: diffusers' Stable Diffusion safety checker over finished images.

Runs on the engine thread only (EngineWorker.check_safety): the checker is loaded there
the first time, cached, and kept on the engine's device next to the pipelines.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPConfig

# The PIL image processor: the default one wants torchvision, which this project does not
# install (its wheels pull a different torch).
from transformers import CLIPImageProcessorPil as CLIPImageProcessor

from engine.api.errors import EngineError

log = logging.getLogger(__name__)

# Hub repos and folders of a full SD model keep the checker in these subfolders.
CHECKER_FOLDER = "safety_checker"
PROCESSOR_FOLDER = "feature_extractor"


@dataclass(slots=True)
class LoadedChecker:
    source: str
    model: StableDiffusionSafetyChecker
    processor: CLIPImageProcessor
    device: torch.device
    dtype: torch.dtype


class SafetyCheckers:
    """The one checker in use, loaded lazily by the engine thread; a new source replaces it."""

    def __init__(self, device: str = "auto", dtype: str = "auto") -> None:
        self.device = device
        self.dtype = dtype
        self._loaded: LoadedChecker | None = None

    def get(self, source: str) -> LoadedChecker:
        if self._loaded is None or self._loaded.source != source:
            self._loaded = load_checker(source, self.device, self.dtype)
        return self._loaded

    def check(self, source: str, images: list[bytes]) -> list[bool]:
        """Whether each PNG is flagged; raises EngineError when the checker cannot load."""
        if not images:
            return []
        return check_images(self.get(source), images)


def _subfolders(source: str) -> tuple[str, str]:
    """A full SD model (folder) holds the checker in subfolders; a checker repo at its root."""
    folder = Path(source)
    if folder.is_dir() and (folder / CHECKER_FOLDER).is_dir():
        return CHECKER_FOLDER, PROCESSOR_FOLDER
    return "", ""


def load_checker(source: str, device: str = "auto", dtype: str = "auto") -> LoadedChecker:
    from engine.pipelines.loading import pick_device, pick_dtype

    chosen_device = pick_device(device)
    chosen_dtype = pick_dtype(dtype, chosen_device)
    checker_sub, processor_sub = _subfolders(source)
    try:
        model = StableDiffusionSafetyChecker.from_pretrained(source, subfolder=checker_sub)
        processor = CLIPImageProcessor.from_pretrained(source, subfolder=processor_sub)
    except (OSError, ValueError) as error:
        log.error("could not load the safety checker %r: %s", source, error)
        raise EngineError("The safety checker could not be loaded.") from error
    model = model.to(chosen_device, chosen_dtype).eval()
    log.info("safety checker %s loaded on %s (%s)", source, chosen_device, chosen_dtype)
    return LoadedChecker(source, model, processor, chosen_device, chosen_dtype)


@torch.inference_mode()
def check_images(checker: LoadedChecker, images: list[bytes]) -> list[bool]:
    pictures = [Image.open(io.BytesIO(png)).convert("RGB") for png in images]
    inputs = checker.processor(images=pictures, return_tensors="pt")
    clip_input = inputs.pixel_values.to(checker.device, checker.dtype)
    # The checker blacks out flagged images in this array; ours are kept, so a stand-in will do.
    placeholder = np.zeros((len(pictures), 1, 1, 3), dtype=np.float32)
    _, flagged = checker.model(clip_input=clip_input, images=placeholder)
    return [bool(value) for value in flagged]


def tiny_checker_config() -> CLIPConfig:
    """A CLIP of a few thousand parameters, enough to run the checker's real code path."""
    vision: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "image_size": 32,
        "patch_size": 8,
        "projection_dim": 32,
    }
    text: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 1000,
        "projection_dim": 32,
    }
    config: dict[str, Any] = {"text_config": text, "vision_config": vision, "projection_dim": 32}
    return CLIPConfig(**config)


def save_tiny_checker(folder: Path, *, flag_everything: bool, seed: int = 0) -> Path:
    """A random tiny checker whose thresholds flag every image, or none, saved as users'
    checkers are (config, weights and the image processor's config in one folder).

    A concept is flagged when cosine(image, concept) - threshold > 0; cosines lie in
    [-1, 1], so a threshold of -2 flags everything and +2 nothing.
    """
    torch.manual_seed(seed)
    model = StableDiffusionSafetyChecker(tiny_checker_config()).eval()
    threshold = -2.0 if flag_everything else 2.0
    with torch.no_grad():
        model.concept_embeds_weights.fill_(threshold)
        model.special_care_embeds_weights.fill_(2.0)  # the special-care nudge stays off
    model.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)
    return folder

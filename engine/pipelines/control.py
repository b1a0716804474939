"""ControlNet: a control map steers txt2img (/dream) or img2img, on the engine thread.

Each base model lists its ControlNet models by control type in its spec. One ControlNet is
kept loaded at a time (SD1.5's take ~0.7 GB of VRAM in fp16, SDXL's up to 2.5 GB): switching
type frees the previous one and the pipelines built on it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetPipeline,
)
from PIL import Image, ImageOps

from engine.api.errors import EngineError, ModelLoadError
from engine.api.infotext import format_number
from engine.api.params import GenerationParams
from engine.pipelines.image_pipes import ModeRun, call_pipeline, derived_pipe, from_base
from engine.pipelines.loading import LoadedModel

log = logging.getLogger(__name__)

# sd-webui-controlnet's canny defaults (Threshold A and B).
CANNY_LOW, CANNY_HIGH = 100, 200
_CONTROLNET_KEY = "controlnet"


class ControlNetUnavailable(EngineError):
    """The model has no ControlNet of the asked type."""

    def __init__(self, model: str, control_type: str, available: list[str]) -> None:
        listed = ", ".join(sorted(available)) if available else "none"
        super().__init__(
            f"Model {model} has no ControlNet for {control_type}. Its control types: {listed}."
        )


def canny_map(image: Image.Image, low: int = CANNY_LOW, high: int = CANNY_HIGH) -> Image.Image:
    """White edges on black, as sd-webui-controlnet's canny module draws them: cv2.Canny on
    the RGB picture (OpenCV takes the strongest gradient of the three channels)."""
    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return Image.fromarray(edges).convert("RGB")


def control_map(image: Image.Image, control_type: str, size: tuple[int, int]) -> Image.Image:
    """The map the ControlNet sees, at the generation size: computed for canny, otherwise
    the member's image taken as a ready map (depth, pose, ... need models we do not run)."""
    fitted = ImageOps.fit(image.convert("RGB"), size, Image.Resampling.LANCZOS)
    return canny_map(fitted) if control_type == "canny" else fitted


def control_infotext(params: GenerationParams, model_name: str) -> dict[str, str]:
    """`ControlNet 0` as sd-webui-controlnet writes it (one quoted value of its own pairs)."""
    assert params.control_type is not None
    canny = params.control_type == "canny"
    unit = {
        "Module": "canny" if canny else "none",
        "Model": model_name,
        "Weight": format_number(params.control_scale),
        "Resize Mode": "Crop and Resize",
        "Low Vram": "False",
        "Processor Res": "512" if canny else None,
        "Threshold A": str(CANNY_LOW) if canny else None,
        "Threshold B": str(CANNY_HIGH) if canny else None,
        "Guidance Start": "0",
        "Guidance End": "1",
        "Pixel Perfect": "False",
        "Control Mode": "Balanced",
    }
    return {"ControlNet 0": ", ".join(f"{k}: {v}" for k, v in unit.items() if v is not None)}


def model_name(source: str) -> str:
    return (
        Path(source).stem
        if source.lower().endswith((".safetensors", ".pth"))
        else Path(source).name
    )


def load_controlnet(loaded: LoadedModel, control_type: str) -> ControlNetModel:
    """The model's ControlNet for `control_type`, loaded once and kept until another type
    is asked for."""
    sources = loaded.spec.controlnets
    source = sources.get(control_type)
    if source is None:
        raise ControlNetUnavailable(loaded.spec.name, control_type, list(sources))
    held = loaded.derived.get(_CONTROLNET_KEY)
    if held is not None and held[0] == control_type:
        return held[1]
    for key in [key for key in loaded.derived if key.startswith(_CONTROLNET_KEY)]:
        del loaded.derived[key]  # the previous type's model and pipelines
    controlnet = _load(source, loaded)
    loaded.derived[_CONTROLNET_KEY] = (control_type, controlnet)
    return controlnet


def _load(source: str, loaded: LoadedModel) -> ControlNetModel:
    name = model_name(source)
    path = Path(source).expanduser()
    try:
        with torch.inference_mode(False):  # ordinary weights, usable outside inference too
            if source.lower().endswith((".safetensors", ".pth")):
                controlnet = ControlNetModel.from_single_file(str(path), dtype=loaded.pipe.dtype)
            else:
                location = str(path) if path.is_dir() else source
                controlnet = ControlNetModel.from_pretrained(location, dtype=loaded.pipe.dtype)
            controlnet.to(loaded.pipe.device)
    except Exception as error:  # diffusers raises many types for a bad or missing model
        log.exception("loading ControlNet %s failed", source)
        raise ModelLoadError(name, type(error).__name__, public=False) from error
    return controlnet


def _pipe(loaded: LoadedModel, control_type: str, img2img: bool) -> Any:
    controlnet = load_controlnet(loaded, control_type)
    sdxl = loaded.family == "sdxl"
    if img2img:
        cls = (
            StableDiffusionXLControlNetImg2ImgPipeline
            if sdxl
            else StableDiffusionControlNetImg2ImgPipeline
        )
    else:
        cls = StableDiffusionXLControlNetPipeline if sdxl else StableDiffusionControlNetPipeline
    name = f"{_CONTROLNET_KEY}-{'img2img' if img2img else 'txt2img'}"
    return derived_pipe(loaded, name, lambda: from_base(cls, loaded, controlnet=controlnet))


def _map(run: ModeRun) -> Image.Image:
    params = run.params
    assert params.control_type is not None
    image = run.input_image(params.control_image)
    return control_map(image, params.control_type, (params.width, params.height))


def _extra(run: ModeRun) -> dict[str, str]:
    params = run.params
    assert params.control_type is not None
    return control_infotext(params, model_name(run.loaded.spec.controlnets[params.control_type]))


def control_txt2img(run: ModeRun) -> tuple[list[Image.Image], dict[str, str]]:
    """/dream with a control image: txt2img steered by the map, our own starting noise."""
    params = run.params
    assert params.control_type is not None
    pipe = _pipe(run.loaded, params.control_type, img2img=False)
    images = call_pipeline(
        run,
        pipe,
        pure_noise_size=(params.width, params.height),
        image=_map(run),
        width=params.width,
        height=params.height,
        controlnet_conditioning_scale=params.control_scale,
    )
    return images, _extra(run)


def control_img2img(
    run: ModeRun, init: Image.Image, strength: float
) -> tuple[list[Image.Image], dict[str, str]]:
    params = run.params
    assert params.control_type is not None
    pipe = _pipe(run.loaded, params.control_type, img2img=True)
    images = call_pipeline(
        run,
        pipe,
        image=init,
        control_image=_map(run),
        strength=strength,
        width=params.width,
        height=params.height,
        controlnet_conditioning_scale=params.control_scale,
    )
    return images, _extra(run)

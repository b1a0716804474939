"""Loading SD 3 and FLUX.1 models as their users keep them: a diffusers folder or Hub id (the
usual path, engine/pipelines/loading.py), a single checkpoint file, a transformer file that
replaces the model's own (a fine-tune, or a GGUF quantization), and bitsandbytes NF4.

A single SD 3 / FLUX file is its transformer, sometimes with the VAE (and text encoders in
ComfyUI's all-in-one files): diffusers' `from_single_file` of the whole pipeline fails on
whatever is missing, so the transformer (and a VAE found in the file) come from the file
and the rest from `config`, a diffusers folder or Hub id of the same family (by default the
family's reference repo, read from the Hugging Face cache) as diffusers' docs load them.
Engine thread only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import diffusers
import torch

from engine.api.errors import ModelLoadError
from engine.api.families import Family, has_vae, safetensors_keys
from engine.api.specs import ModelSpec

log = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
TRANSFORMER_SUFFIXES = (".safetensors", GGUF_SUFFIX)


def flow_dtype(row: Family, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """bfloat16 for SD 3 / FLUX where the engine would take float16: T5 and FLUX's
    activations overflow in float16 (black or noise images), bfloat16 keeps float32's
    range. Only where the card computes in bfloat16 (CUDA from Ampere on)."""
    if dtype != torch.float16 or row.half_dtype != "bfloat16":
        return dtype
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return dtype


def check_flow_options(spec: ModelSpec, row: Family, device: torch.device) -> None:
    """The transformer file and quantization a model sets, refused in one sentence before
    anything loads when its family or this machine cannot have them."""
    if (spec.transformer or spec.quantize) and row.transformer is None:
        what = '"transformer"' if spec.transformer else '"quantize"'
        _refuse(spec, f"{what} is for SD 3 and FLUX models, and {spec.name} is {row.label}")
    if spec.transformer is not None:
        path = Path(spec.transformer).expanduser()
        if not path.is_file() or not path.name.lower().endswith(TRANSFORMER_SUFFIXES):
            _refuse(spec, f'"transformer" must be a .safetensors or .gguf file; {path} is not')
        if spec.quantize and path.suffix.lower() == GGUF_SUFFIX:
            _refuse(spec, 'a GGUF "transformer" is quantized already: leave "quantize" out')
    if spec.quantize == "nf4" and device.type != "cuda":
        _refuse(
            spec, f'"quantize": "nf4" needs a CUDA GPU (bitsandbytes), and this runs on {device}'
        )


def _refuse(spec: ModelSpec, reason: str) -> None:
    raise ModelLoadError(
        spec.name,
        "its settings do not fit it",
        public=False,
        owner_reason=f"{reason}: fix model {spec.name} in SDBOT_MODELS",
    )


def load_flow_pretrained(
    spec: ModelSpec, row: Family, dtype: torch.dtype, location: str, extra: dict[str, Any]
) -> Any:
    """A folder or Hub id with its transformer replaced by `spec.transformer` or quantized."""
    components = dict(extra)
    if spec.transformer is not None:
        components["transformer"] = transformer_from_file(
            Path(spec.transformer).expanduser(), row, location, dtype
        )
    elif spec.quantize == "nf4":
        components["transformer"] = _nf4_transformer(row, location, dtype)
    return _pipeline_class(row).from_pretrained(location, dtype=dtype, **components)


def load_flow_single_file(
    spec: ModelSpec, row: Family, path: Path, dtype: torch.dtype, extra: dict[str, Any]
) -> Any:
    """A single SD 3 / FLUX checkpoint: its transformer (and VAE) from the file, the rest
    from `config` or the family's reference repo."""
    location = spec.config or row.reference_repo
    components = dict(extra)
    components["transformer"] = transformer_from_file(path, row, location, dtype)
    keys = safetensors_keys(path) or set()
    if "vae" not in components and has_vae(keys):
        components["vae"] = diffusers.AutoencoderKL.from_single_file(
            str(path), config=location, subfolder="vae", dtype=dtype
        )
    return _pipeline_class(row).from_pretrained(location, dtype=dtype, **components)


def transformer_from_file(path: Path, row: Family, location: str, dtype: torch.dtype) -> Any:
    """The family's transformer from one file: original (Stability's, Black Forest Labs',
    ComfyUI's) or diffusers' key layout, or GGUF (dequantized layer by layer as it runs,
    in `dtype`; the `gguf` package reads it)."""
    assert row.transformer is not None
    cls = getattr(diffusers, row.transformer)
    options: dict[str, Any] = {"config": location, "subfolder": "transformer", "dtype": dtype}
    if path.suffix.lower() == GGUF_SUFFIX:
        options["quantization_config"] = diffusers.GGUFQuantizationConfig(compute_dtype=dtype)
    return cls.from_single_file(str(path), **options)


def _nf4_transformer(row: Family, location: str, dtype: torch.dtype) -> Any:
    """The transformer in 4-bit NF4 (bitsandbytes, as diffusers' quantization guide loads
    FLUX.1 dev on 16 GB cards): about a quarter of its bf16 size, computing in `dtype`."""
    assert row.transformer is not None
    config = diffusers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
    )
    cls = getattr(diffusers, row.transformer)
    return cls.from_pretrained(
        location, subfolder="transformer", quantization_config=config, dtype=dtype
    )


def _pipeline_class(row: Family) -> Any:
    return getattr(diffusers, row.pipeline)

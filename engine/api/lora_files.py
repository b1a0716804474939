"""LoRA files as members download them (kohya / A1111 `.safetensors`), read without torch.

The bot checks a file when a prompt names it, before the job is charged: that it is a
readable safetensors file, a kind of LoRA diffusers can apply (kohya LoRA, LyCORIS LoCon,
diffusers/peft), and which model family it was made for. Only the header is read: its
length is the first 8 bytes, then JSON with each tensor's dtype, shape and offsets and the
`__metadata__` strings (kohya's `ss_*` keys).

Also where /train puts the A1111 copy of what it trained: the engine writes it, the bot
sends it to the member.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.api.families import FAMILIES
from engine.api.specs import ModelFamily

SAFETENSORS = ".safetensors"
# safetensors itself refuses headers past 100 MB: a larger claim is a corrupt file.
MAX_HEADER_BYTES = 100 * 1024 * 1024
# The cross-attention width (the text encoder's) of each family: attn2.to_k's input.
CONTEXT_WIDTHS: dict[int, ModelFamily] = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
# The families whose LoRAs a file's metadata and layers tell apart.
# As members read each family (engine/api/families.py); LoRA files are told apart for
# the first three only.
FAMILY_NAMES: dict[str, str] = {name: row.label for name, row in FAMILIES.items()}
_TOLD_APART = frozenset({"sd1", "sd2", "sdxl"})
# What LyCORIS writes for the kinds diffusers cannot apply to SD 1.x/SDXL, by key part.
_UNSUPPORTED = {
    ".hada_": "a LyCORIS LoHa",
    ".lokr_": "a LyCORIS LoKr",
    ".lora_mid.": "a LyCORIS LoCon with CP decomposition",
    ".oft_": "a LyCORIS OFT",
    ".on_input": "a LyCORIS (IA)³",
    ".dora_scale": "a DoRA",  # diffusers drops the magnitudes: not the LoRA its author made
}
# /train's copy for A1111, Forge and ComfyUI, beside the file this bot loads.
A1111_SUFFIX = ".a1111.safetensors"


class LoraFileError(ValueError):
    """Why a file cannot be used, as the end of a sentence: `The LoRA x {reason}.`"""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def sentence(self, name: str) -> str:
        return f"The LoRA {name} {self.reason}."


@dataclass(frozen=True, slots=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    length: int  # of the JSON, after the 8 bytes that give it

    @property
    def data_start(self) -> int:
        """Where the tensor data begins: what A1111's LoRA hash starts from."""
        return 8 + self.length


def read_header(path: Path) -> SafetensorsHeader:
    """The header of a .safetensors file; LoraFileError for anything that is not one
    (too short, a header past the file's end or its size limit, data that does not end
    where the file does: a truncated download)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            first = handle.read(8)
            length = int.from_bytes(first, "little") if len(first) == 8 else -1
            if length < 2 or length > MAX_HEADER_BYTES or 8 + length > size:
                raise LoraFileError("is not a readable .safetensors file")
            raw = handle.read(length)
    except OSError:
        raise LoraFileError("could not be read") from None
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise LoraFileError("is not a readable .safetensors file (its header is damaged)") from None
    if not isinstance(parsed, dict):
        raise LoraFileError("is not a readable .safetensors file (its header is damaged)")
    metadata = _metadata(parsed.pop("__metadata__", None))
    tensors, end = _tensors(parsed)
    if end != size - 8 - length:
        raise LoraFileError("is incomplete or damaged (its data does not match its header)")
    return SafetensorsHeader(tensors, metadata, length)


def _metadata(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise LoraFileError("is not a readable .safetensors file (its metadata is damaged)")
    return {str(key): value for key, value in raw.items()}


def _tensors(parsed: dict[str, Any]) -> tuple[dict[str, TensorInfo], int]:
    tensors: dict[str, TensorInfo] = {}
    end = 0
    for name, info in parsed.items():
        try:
            start, stop = (int(x) for x in info["data_offsets"])
            shape = tuple(int(x) for x in info["shape"])
            dtype = str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise LoraFileError(
                "is not a readable .safetensors file (a tensor is damaged)"
            ) from None
        if not 0 <= start <= stop:
            raise LoraFileError("is not a readable .safetensors file (a tensor is damaged)")
        tensors[name] = TensorInfo(dtype, shape)
        end = max(end, stop)
    return tensors, end


# -- What kind of LoRA, for which model ------------------------------------------------------


def check_loadable(header: SafetensorsHeader) -> None:
    """LoraFileError unless diffusers can apply the file: a kohya LoRA or LoCon (A1111's
    format) or a diffusers/peft LoRA, and none of LyCORIS's other kinds."""
    keys = header.tensors
    if not keys:
        raise LoraFileError("has no tensors in it")
    for part, kind in _UNSUPPORTED.items():
        if any(part in key or key.endswith(part.rstrip(".")) for key in keys):
            raise LoraFileError(f"is {kind} file, which this bot cannot apply (LoRA and LoCon are)")
    lora_keys = (".lora_down.", ".lora_A.", ".lora.down.", "lora_linear_layer.down.")
    if not any(part in key for key in keys for part in lora_keys):
        if any("embedding" in key or key in ("emb_params", "clip_l", "clip_g") for key in keys):
            raise LoraFileError("is an embedding, not a LoRA (write its token in the prompt)")
        raise LoraFileError("is not a LoRA this bot can read")


def lora_family(header: SafetensorsHeader) -> ModelFamily | None:
    """The family a LoRA was made for: from kohya's metadata (`ss_base_model_version`,
    `ss_v2`, as A1111 reads it) or the modelspec's architecture, else from its layers'
    widths; None when nothing tells."""
    return _family_from_metadata(header.metadata) or _family_from_shapes(header.tensors)


def _family_from_metadata(metadata: dict[str, str]) -> ModelFamily | None:
    ours = metadata.get("sdbot.family", "")  # /train's own files say it
    if ours in FAMILIES:
        return ours  # type: ignore[return-value]
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("flux"):
        return "flux"
    if version.startswith("sd3"):
        return "sd3"
    architecture = metadata.get("modelspec.architecture", "")
    if version.startswith("sdxl") or architecture.startswith("stable-diffusion-xl"):
        return "sdxl"
    if metadata.get("ss_v2") == "True" or version.startswith("sd_v2"):
        return "sd2"
    if architecture.startswith("stable-diffusion-v2"):
        return "sd2"
    if version.startswith("sd_v1") or architecture.startswith("stable-diffusion-v1"):
        return "sd1"
    return None


def _family_from_shapes(tensors: dict[str, TensorInfo]) -> ModelFamily | None:
    if any(key.startswith("lora_te2_") for key in tensors):  # SDXL's second text encoder
        return "sdxl"
    # FLUX's single-stream blocks (diffusers' names, BFL's in kohya's); SD 3's joint blocks.
    if any("single_transformer_blocks" in key or "single_blocks" in key for key in tensors):
        return "flux"
    if any(
        key.startswith(("transformer.transformer_blocks.", "lora_unet_joint_blocks_"))
        for key in tensors
    ):
        return "sd3"
    for key, info in tensors.items():
        down = ".lora_down." in key or ".lora_A." in key or ".lora.down." in key
        if down and ("attn2_to_k" in key or "attn2.to_k" in key) and len(info.shape) >= 2:
            return CONTEXT_WIDTHS.get(info.shape[1])
    return None


def check_family(header: SafetensorsHeader, family: ModelFamily, model: str) -> None:
    """LoraFileError when the file says it was made for another family than `model`'s."""
    made_for = lora_family(header)
    # FLUX.1 dev's and schnell's transformers are one architecture: LoRAs cross over.
    if made_for is None or _architecture(made_for) == _architecture(family):
        return
    if family not in _TOLD_APART:  # a family whose LoRAs this module does not tell apart
        raise LoraFileError(f"is for {FAMILY_NAMES[made_for]} models, which {model} is not")
    raise LoraFileError(
        f"is for {FAMILY_NAMES[made_for]} models; {model} is an {FAMILY_NAMES[family]} model"
    )


def _architecture(family: ModelFamily) -> str:
    return "flux" if family == "flux-schnell" else family


def copy_readers(metadata: dict[str, Any]) -> str:
    """Who loads /train's copy of a file with this metadata, in members' words: A1111 runs
    no SD 3 LoRA or FLUX at all; Forge and ComfyUI read those in diffusers' layout."""
    row = FAMILIES.get(str(metadata.get("sdbot.family")))  # type: ignore[call-overload]
    return "Forge and ComfyUI" if row is not None and row.flow else "A1111, Forge and ComfyUI"


def a1111_copy(path: Path) -> Path:
    """Where /train keeps the A1111-format copy of the file at `path`."""
    return path.with_name(path.name.removesuffix(SAFETENSORS) + A1111_SUFFIX)

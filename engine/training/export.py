"""/train's results in the format A1111, Forge and ComfyUI load, written beside the files this
bot loads (engine/api/lora_files.py's `a1111_copy`), on the engine thread.

- A LoRA as kohya's sd-scripts writes one: `lora_unet_<module>.lora_down.weight`,
  `.lora_up.weight` and `.alpha` per layer, converted from the peft state by diffusers' own
  `convert_all_state_dict_to_peft` and `convert_state_dict_to_kohya`, with the `ss_`
  metadata A1111 reads (network dim and alpha, base model version, output name). The
  UNet's layers keep diffusers' names (`down_blocks_1_attentions_0_...`), as kohya's SD 1.x
  files do; A1111, ComfyUI and diffusers map them for SDXL too.
- An embedding as kohya writes one for SD 1.x/2.x: `{"emb_params": (vectors, width)}`.
  A1111 names an embedding by its file name, so the member saves it as `<token>.safetensors`.

- A LoRA of SD 3 or FLUX.1 as diffusers writes it (`transformer.<module>.lora_A.weight`):
  A1111 has no FLUX; ComfyUI and Forge read this layout for both families themselves
  (comfy/lora.py maps `transformer.` keys, the "regular diffusers" SD 3 and FLUX format,
  and Forge's copy of it does the same), so the copy is those tensors in fp16 with the
  `ss_` keys, not kohya's names.
Both in fp16, kohya's usual save precision: A1111 and ComfyUI apply them in the model's
fp16 anyway, and a LoRA half the size fits Discord's upload limit twice as often.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import safetensors.torch
import torch

from engine.api.files import write_atomically
from engine.api.hashes import tensor_data_sha256
from engine.api.lora_files import a1111_copy

COPY_DTYPE = torch.float16
# kohya's `ss_base_model_version` per family, which A1111 reads to tell SDXL LoRAs apart.
BASE_MODEL_VERSIONS = {
    "sd1": "sd_v1",
    "sd2": "sd_v2",
    "sdxl": "sdxl_base_v1-0",
    # SD 3 and FLUX: labels of ours in the same key (A1111 reads neither family).
    "sd3": "sd3",
    "flux": "flux1",
    "flux-schnell": "flux1",
}
# Families whose copy keeps diffusers' keys (see the module's docstring).
DIFFUSERS_LAYOUT = frozenset({"sd3", "flux", "flux-schnell"})


def kohya_lora(diffusers_state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """A diffusers-format LoRA state (`unet.<module>.lora.down.weight`, as
    `save_lora_weights` writes it) in kohya's keys, with every layer's alpha."""
    from diffusers.utils import convert_state_dict_to_kohya
    from diffusers.utils.state_dict_utils import convert_all_state_dict_to_peft

    kohya = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(dict(diffusers_state)))
    tensors = {}
    for key, value in kohya.items():
        if key.endswith(".alpha"):
            # diffusers writes the rank as an int64; kohya a float, the LoRA's own alpha.
            tensors[key] = torch.tensor(float(alpha), dtype=COPY_DTYPE)
        else:
            tensors[key] = value.detach().to(device="cpu", dtype=COPY_DTYPE).contiguous()
    return tensors


def copy_metadata(metadata: dict[str, str], dim: int | None, alpha: float | None) -> dict[str, str]:
    """The training's metadata, with the keys A1111 reads to tell what the file is for."""
    family = metadata.get("sdbot.family", "sd1")
    extra = {
        "ss_base_model_version": BASE_MODEL_VERSIONS.get(family, "sd_v1"),
        "ss_v2": str(family == "sd2"),
    }
    if dim is not None and alpha is not None:
        extra |= {
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(dim),
            "ss_network_alpha": f"{alpha:g}",
        }
    return {**metadata, **extra}


def encoded(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A .safetensors file's bytes, with the hash A1111 shows for it in its header (as
    kohya's `sshs_model_hash`; the tensor data does not depend on the header)."""
    data = safetensors.torch.save(tensors, metadata=metadata)
    digest = tensor_data_sha256(data)
    return safetensors.torch.save(tensors, metadata={**metadata, "sshs_model_hash": digest})


def write_lora_copy(
    path: Path,
    diffusers_state: dict[str, torch.Tensor],
    metadata: dict[str, str],
    rank: int,
    alpha: float,
) -> str:
    """Write the A1111 copy of the LoRA whose file is `path`; returns the copy's LoRA hash
    (the full sha256 of its tensor data), which the infotext of its images names."""
    if metadata.get("sdbot.family") in DIFFUSERS_LAYOUT:
        tensors = {
            key: value.detach().to(device="cpu", dtype=COPY_DTYPE).contiguous()
            for key, value in diffusers_state.items()
        }
    else:
        tensors = kohya_lora(diffusers_state, alpha)
    data = encoded(tensors, copy_metadata(metadata, rank, alpha))
    write_atomically(a1111_copy(path), data)
    return tensor_data_sha256(data)


def write_embedding_copy(path: Path, vectors: torch.Tensor, metadata: dict[str, str]) -> str:
    """Write the A1111 copy of the embedding whose file is `path`; returns the copy's
    sha256 (A1111's `TI hashes` take the whole file's)."""
    tensors = {"emb_params": vectors.detach().to(device="cpu", dtype=COPY_DTYPE).contiguous()}
    data = encoded(tensors, copy_metadata(metadata, None, None))
    write_atomically(a1111_copy(path), data)
    return hashlib.sha256(data).hexdigest()

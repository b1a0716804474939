"""LoRA files as members download them, built in the tests from a tiny model: the keys
kohya's sd-scripts (networks/lora.py) writes, `lora_<prefix>_<module path with _>` with
`.lora_down.weight`, `.lora_up.weight` and `.alpha`, in fp16 as it saves them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

# sd-scripts' LoRANetwork targets: attention blocks, and for LoCon the convolutions too.
UNET_TARGETS = ("Transformer2DModel",)
LOCON_TARGETS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_TARGETS = ("CLIPAttention", "CLIPMLP")


def kohya_state(
    pipe: Any, seed: int = 1, rank: int = 4, *, text: bool = True, locon: bool = False
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    targets = UNET_TARGETS + (LOCON_TARGETS if locon else ())
    state = _layers(pipe.unet, "lora_unet", targets, generator, rank)
    if text:
        encoders = [("lora_te", pipe.text_encoder)]
        if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: te1 and te2
            encoders = [("lora_te1", pipe.text_encoder), ("lora_te2", pipe.text_encoder_2)]
        for prefix, encoder in encoders:
            state |= _layers(encoder, prefix, TEXT_TARGETS, generator, rank)
    return state


def _layers(
    model: Any, prefix: str, targets: tuple[str, ...], generator: torch.Generator, rank: int
) -> dict[str, torch.Tensor]:
    state = {}
    for name, module in model.named_modules():
        if type(module).__name__ not in targets:
            continue
        for child_name, child in module.named_modules():
            key = f"{prefix}.{name}.{child_name}".replace(".", "_")
            shapes = _shapes(child, rank)
            if shapes is None:
                continue
            down, up = shapes
            state[f"{key}.lora_down.weight"] = torch.randn(down, generator=generator).half()
            state[f"{key}.lora_up.weight"] = (0.5 * torch.randn(up, generator=generator)).half()
            state[f"{key}.alpha"] = torch.tensor(rank / 2).half()
    return state


def _shapes(child: Any, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    if isinstance(child, torch.nn.Linear):
        return (rank, child.in_features), (child.out_features, rank)
    if isinstance(child, torch.nn.Conv2d):
        kernel = tuple(child.kernel_size)
        return (rank, child.in_channels, *kernel), (child.out_channels, rank, 1, 1)
    return None


def write_kohya(path: Path, state: dict[str, torch.Tensor], **metadata: str) -> Path:
    defaults = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": "4",
        "ss_network_alpha": "2.0",
        "ss_output_name": path.stem,
    }
    save_file(state, str(path), metadata={**defaults, **metadata})
    return path


def addnet_hash(path: Path) -> str:
    """A1111's LoRA hash, computed here as its modules/hashes.py does, independently of ours."""
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        handle.seek(length + 8)
        return hashlib.sha256(handle.read()).hexdigest()[:12]

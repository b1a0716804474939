"""A tiny random IP-Adapter for a saved tiny model, built offline, for image prompts' tests.

Saved in the layout diffusers' `load_ip_adapter` reads (h94/IP-Adapter's): one safetensors
file of `image_proj.*` (the image projection: CLIP image embedding to 4 tokens of the UNet's
cross-attention width) and `ip_adapter.<n>.to_k_ip/to_v_ip.weight` for every cross-attention
layer, numbered as the original IP-Adapter numbers them (1, 3, 5, ... in the UNet's processor
order), and its CLIP image encoder (a `CLIPVisionModelWithProjection`) in `image_encoder/`
beside it. Its pictures mean nothing, but every shape and loading step is the real one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

WEIGHT_NAME = "ip-adapter_tiny.safetensors"
EMBED_DIM = 32  # the image encoder's projection: ViT-H's is 1024
IMAGE_TOKENS = 4  # the plain IP-Adapter's projection makes 4 image tokens


def tiny_image_encoder(seed: int = 0) -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    config: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "projection_dim": EMBED_DIM,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
        "hidden_act": "quick_gelu",
    }
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**config))


def _hidden_size(unet: UNet2DConditionModel, name: str) -> int:
    """A processor's attention width, by diffusers' own rule (loaders/unet.py)."""
    channels = list(unet.config.block_out_channels)
    if name.startswith("mid_block"):
        return channels[-1]
    block = int(name.split(".")[1])
    return list(reversed(channels))[block] if name.startswith("up_blocks") else channels[block]


def save_tiny_ip_adapter(folder: Path, model: Path, seed: int = 0) -> Path:
    """An IP-Adapter matching the UNet of the saved model at `model`; returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    unet = UNet2DConditionModel.from_pretrained(str(model), subfolder="unet")
    cross = int(unet.config.cross_attention_dim)
    torch.manual_seed(seed)
    projection = torch.nn.Linear(EMBED_DIM, cross * IMAGE_TOKENS)
    tensors = {
        "image_proj.proj.weight": projection.weight.detach(),
        "image_proj.proj.bias": projection.bias.detach(),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):  # self-attention: no image tokens
            continue
        hidden = _hidden_size(unet, name)
        for part in ("to_k_ip", "to_v_ip"):
            layer = torch.nn.Linear(cross, hidden, bias=False)
            tensors[f"ip_adapter.{key_id}.{part}.weight"] = layer.weight.detach()
        key_id += 2
    save_file({key: value.contiguous() for key, value in tensors.items()}, folder / WEIGHT_NAME)
    tiny_image_encoder(seed).save_pretrained(str(folder / "image_encoder"))
    return folder

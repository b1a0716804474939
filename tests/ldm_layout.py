"""Write a diffusers pipeline as an original (CompVis/SGM, A1111-style) single checkpoint file.

The inverse of diffusers' `single_file_utils.convert_ldm_*` / `convert_open_clip_checkpoint`,
generic over block counts, so tests can feed `from_single_file` a file in the layout that
A1111 users keep, made from a tiny random model.
"""

from __future__ import annotations

from typing import Any

import torch

Tensors = dict[str, torch.Tensor]

_RESNET_NAMES = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _unet_key(parts: list[str], layers: int, up_has_attention: dict[int, bool]) -> str:
    head2 = ".".join(parts[:2])
    if head2 in _UNET_FIXED:
        return f"{_UNET_FIXED[head2]}.{'.'.join(parts[2:])}"
    if parts[0] in _UNET_FIXED:
        return f"{_UNET_FIXED[parts[0]]}.{'.'.join(parts[1:])}"
    block = int(parts[1]) if parts[0] in ("down_blocks", "up_blocks") else 0
    stride = layers + 1
    if parts[0] == "down_blocks":
        if parts[2] == "downsamplers":
            return f"input_blocks.{(block + 1) * stride}.0.op.{'.'.join(parts[5:])}"
        slot = 0 if parts[2] == "resnets" else 1
        return f"input_blocks.{1 + block * stride + int(parts[3])}.{slot}.{'.'.join(parts[4:])}"
    if parts[0] == "mid_block":
        index = {"resnets": {0: 0, 1: 2}, "attentions": {0: 1}}[parts[1]][int(parts[2])]
        return f"middle_block.{index}.{'.'.join(parts[3:])}"
    if parts[0] == "up_blocks":
        if parts[2] == "upsamplers":
            slot = 2 if up_has_attention[block] else 1
            return f"output_blocks.{block * stride + layers}.{slot}.conv.{'.'.join(parts[5:])}"
        slot = 0 if parts[2] == "resnets" else 1
        return f"output_blocks.{block * stride + int(parts[3])}.{slot}.{'.'.join(parts[4:])}"
    raise KeyError(f"unmapped UNet key {'.'.join(parts)}")


def unet_to_ldm(state: Tensors, config: Any) -> Tensors:
    layers = config["layers_per_block"]
    up_has_attention = {
        i: any(k.startswith(f"up_blocks.{i}.attentions.") for k in state)
        for i in range(len(config["up_block_types"]))
    }
    out = {}
    for key, value in state.items():
        new = _unet_key(key.split("."), layers, up_has_attention)
        if "resnets" in key:
            for old, replacement in _RESNET_NAMES:
                new = new.replace(old, replacement)
        out[f"model.diffusion_model.{new}"] = value
    return out


def _vae_mid_attention(rest: str) -> str:
    for old, new in (
        ("group_norm.", "norm."),
        ("to_q.", "q."),
        ("to_k.", "k."),
        ("to_v.", "v."),
        ("to_out.0.", "proj_out."),
    ):
        rest = rest.replace(old, new)
    return rest


def vae_to_ldm(state: Tensors, config: Any) -> Tensors:
    up_count = len(config["up_block_types"])
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        new = key
        if parts[1] == "down_blocks":
            where = f"block.{parts[4]}" if parts[3] == "resnets" else "downsample"
            tail = parts[5:]
            new = f"{parts[0]}.down.{parts[2]}.{where}.{'.'.join(tail)}"
        elif parts[1] == "up_blocks":
            block = up_count - 1 - int(parts[2])  # the original counts up blocks bottom-up
            where = f"block.{parts[4]}" if parts[3] == "resnets" else "upsample"
            new = f"{parts[0]}.up.{block}.{where}.{'.'.join(parts[5:])}"
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                new = f"{parts[0]}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:])}"
            else:
                new = f"{parts[0]}.mid.attn_1.{_vae_mid_attention('.'.join(parts[4:]))}"
                if value.ndim == 2:  # the original VAE's attention uses 1x1 convolutions
                    value = value[:, :, None, None]
        new = new.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        out[f"first_stage_model.{new}"] = value
    return out


def clip_to_ldm(state: Tensors, prefix: str) -> Tensors:
    """OpenAI CLIP (SD1, SDXL's first encoder): Hugging Face keys under a prefix."""
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        inner = key if key.startswith(("text_model.", "text_projection")) else f"text_model.{key}"
        out[prefix + inner] = value
    return out


def openclip_to_ldm(state: Tensors, prefix: str = "conditioner.embedders.1.model.") -> Tensors:
    """OpenCLIP (SDXL's second encoder): renamed keys and fused q/k/v projections."""
    out: Tensors = {}
    fused: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        key = key if key.startswith(("text_model.", "text_projection")) else f"text_model.{key}"
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        renamed = (
            key.replace("text_model.embeddings.token_embedding.weight", "token_embedding.weight")
            .replace("text_model.embeddings.position_embedding.weight", "positional_embedding")
            .replace("text_model.final_layer_norm.", "ln_final.")
            .replace("text_model.encoder.layers.", "transformer.resblocks.")
            .replace("layer_norm1", "ln_1")
            .replace("layer_norm2", "ln_2")
            .replace(".fc1.", ".c_fc.")
            .replace(".fc2.", ".c_proj.")
            .replace(".self_attn", ".attn")
        )
        for projection in "qkv":
            tag = f".attn.{projection}_proj."
            if tag in renamed:
                block, kind = renamed.split(tag)
                fused.setdefault((block, kind), {})[projection] = value
                break
        else:
            out[renamed] = value
    for (block, kind), parts in fused.items():
        out[f"{block}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return {prefix + key: value for key, value in out.items()}


def pipeline_to_ldm(pipe: Any) -> Tensors:
    state = {}
    state.update(unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config))
    state.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    if getattr(pipe, "text_encoder_2", None) is not None:
        state.update(
            clip_to_ldm(pipe.text_encoder.state_dict(), "conditioner.embedders.0.transformer.")
        )
        state.update(openclip_to_ldm(pipe.text_encoder_2.state_dict()))
    else:
        state.update(clip_to_ldm(pipe.text_encoder.state_dict(), "cond_stage_model.transformer."))
    return {key: value.detach().contiguous() for key, value in state.items()}

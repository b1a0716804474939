"""Write SD 3 and FLUX transformers as the single files their users keep: Stability's
original MMDiT layout (the inverse of diffusers' `convert_sd3_transformer_checkpoint_to_
diffusers`), diffusers' own layout in one file, and GGUF (Q8_0 where a row allows it),
so tests feed the real `from_single_file` a file made from a tiny random model.

FLUX's original (Black Forest Labs) layout is not written: diffusers' converter assumes
FLUX.1's full width (3072), which a tiny model does not have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.ldm_layout import vae_to_ldm

Tensors = dict[str, torch.Tensor]


def _swap(weight: torch.Tensor) -> torch.Tensor:
    """diffusers splits AdaLayerNormContinuous into (scale, shift), the original (shift, scale)."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


_FIXED = {
    "pos_embed.pos_embed": "pos_embed",
    "pos_embed.proj.": "x_embedder.proj.",
    "time_text_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
    "time_text_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
    "time_text_embed.text_embedder.linear_1.": "y_embedder.mlp.0.",
    "time_text_embed.text_embedder.linear_2.": "y_embedder.mlp.2.",
    "context_embedder.": "context_embedder.",
    "proj_out.": "final_layer.linear.",
}
_BLOCK = {
    "attn.to_out.0.": "x_block.attn.proj.",
    "attn.to_add_out.": "context_block.attn.proj.",
    "norm1.linear.": "x_block.adaLN_modulation.1.",
    "norm1_context.linear.": "context_block.adaLN_modulation.1.",
    "ff.net.0.proj.": "x_block.mlp.fc1.",
    "ff.net.2.": "x_block.mlp.fc2.",
    "ff_context.net.0.proj.": "context_block.mlp.fc1.",
    "ff_context.net.2.": "context_block.mlp.fc2.",
}


def sd3_to_original(state: Tensors, layers: int) -> Tensors:
    """An SD3Transformer2DModel's state dict in Stability's MMDiT key layout."""
    out: Tensors = {}
    for key, value in state.items():
        if key.startswith("norm_out.linear."):
            out[key.replace("norm_out.linear.", "final_layer.adaLN_modulation.1.")] = _swap(value)
            continue
        for old, new in _FIXED.items():
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
    for index in range(layers):
        prefix = f"transformer_blocks.{index}."
        for kind in ("weight", "bias"):
            for side, names in (("x_block", ("to_q", "to_k", "to_v")), ("context_block", None)):
                parts = names or ("add_q_proj", "add_k_proj", "add_v_proj")
                fused = [state[f"{prefix}attn.{name}.{kind}"] for name in parts]
                out[f"joint_blocks.{index}.{side}.attn.qkv.{kind}"] = torch.cat(fused)
        for key, value in state.items():
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix) :]
            for old, new in _BLOCK.items():
                if rest.startswith(old):
                    last_context = index == layers - 1 and old == "norm1_context.linear."
                    out[f"joint_blocks.{index}.{new}{rest[len(old) :]}"] = (
                        _swap(value) if last_context else value
                    )
    return {key: value.detach().contiguous() for key, value in out.items()}


def sd3_single_file(pipe: Any, with_vae: bool = True) -> Tensors:
    """An SD 3 checkpoint as Stability ships it: the MMDiT under `model.diffusion_model.`,
    and the VAE under `first_stage_model.`."""
    transformer = pipe.transformer
    state = sd3_to_original(transformer.state_dict(), transformer.config.num_layers)
    out = {f"model.diffusion_model.{key}": value for key, value in state.items()}
    if with_vae:
        out.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    return {key: value.detach().contiguous() for key, value in out.items()}


def write_gguf(path: Path, state: Tensors) -> Path:
    """A GGUF file of a state dict (diffusers' keys, as some FLUX GGUFs carry them): 2-D
    weights whose rows fill Q8_0 blocks quantized, the rest kept in float32."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="flux")
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
    for name, tensor in state.items():
        data = tensor.detach().float().numpy()
        if data.ndim == 2 and data.shape[-1] % block == 0:
            quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path

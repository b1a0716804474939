"""Tiny randomly initialised Stable Diffusion pipelines, built offline.

`python -m bot selftest`, the tests and the benchmarks save these with `save_pretrained`
and load them back through the same code users' models take. Their images are noise, but
every shape, scheduler and code path is the real one; a 64x64, 4-step call takes well
under a second on a CPU.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from engine.api.specs import ModelFamily

# SD1.5's own scheduler settings (its scheduler_config.json).
SD_BETAS: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
}
_MERGES = ("t h", "th e</w>", "c a", "ca t</w>", "d o", "do g</w>")


def _byte_alphabet() -> list[str]:
    """CLIP's (GPT-2's) printable stand-ins for the 256 byte values."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in sorted(chars)]


def write_tokenizer_files(folder: Path) -> None:
    """A byte-level BPE vocabulary of ~520 tokens, with CLIP's special tokens last."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    tokens = [*alphabet, *(c + "</w>" for c in alphabet)]
    tokens += [merge.replace(" ", "") for merge in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n")


def tiny_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    write_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77, pad_token=pad_token)


def _text_config(tokenizer: CLIPTokenizer, **overrides: Any) -> CLIPTextConfig:
    config: dict[str, Any] = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.eos_token_id,
        "hidden_size": 32,
        "intermediate_size": 37,
        "layer_norm_eps": 1e-5,
        "num_attention_heads": 4,
        "num_hidden_layers": 5,
        "vocab_size": 1000,
        "hidden_act": "quick_gelu",
        "max_position_embeddings": 77,
        "projection_dim": 32,
    }
    config.update(overrides)
    return CLIPTextConfig(**config)


def tiny_vae(**overrides: Any) -> AutoencoderKL:
    """Two blocks that downsample by 2 (SD's: 8), 4 latent channels unless overridden."""
    config: dict[str, Any] = {
        "block_out_channels": (32, 64),
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 64,
    }
    config.update(overrides)
    return AutoencoderKL(**config)


def _unet(**overrides: Any) -> UNet2DConditionModel:
    config: dict[str, Any] = {
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
    }
    config.update(overrides)
    return UNet2DConditionModel(**config)


def build_tiny_sd1(workdir: Path, seed: int = 0) -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(workdir / "tokenizer-src")
    return StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        tokenizer=tokenizer,
        unet=_unet(),
        scheduler=PNDMScheduler(**SD_BETAS, set_alpha_to_one=False, skip_prk_steps=True),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def build_tiny_sdxl(
    workdir: Path, seed: int = 0, second_width: int = 64
) -> StableDiffusionXLPipeline:
    """SDXL's two text encoders, concatenated hidden states and added time embeddings."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(workdir / "tokenizer-src")
    tokenizer_2 = tiny_tokenizer(workdir / "tokenizer-2-src", pad_token="!")
    unet = _unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        # 6 size/crop time ids of 8 each, plus the second encoder's pooled output
        projection_class_embeddings_input_dim=6 * 8 + second_width,
        cross_attention_dim=32 + second_width,
    )
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(
            tokenizer,
            hidden_size=second_width,
            projection_dim=second_width,
            intermediate_size=2 * second_width,
        )
    )
    return StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="leading"),
        force_zeros_for_empty_prompt=True,
    )


def save_tiny_model(folder: Path, family: ModelFamily = "sd1", seed: int = 0) -> Path:
    """Build a tiny pipeline of `family` and save it as a diffusers folder; returns the folder."""
    build = build_tiny_sdxl if family == "sdxl" else build_tiny_sd1
    with tempfile.TemporaryDirectory() as workdir:
        build(Path(workdir), seed=seed).save_pretrained(str(folder))
    return folder


def save_tiny_controlnet(folder: Path, model: Path, seed: int = 0) -> Path:
    """A ControlNet made from a saved tiny model's UNet (as real ones start), saved as a
    diffusers folder."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(str(model), subfolder="unet")
    # Its condition encoder must shrink the control image to the latent size: the tiny VAE
    # downsamples by 2, hence one strided block (real ones have three, for 8).
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    controlnet.save_pretrained(str(folder))
    return folder


def save_tiny_inpainting(folder: Path, seed: int = 1) -> Path:
    """A tiny SD1 inpainting model: its UNet takes 9 channels (latents, mask, masked image)."""
    return _save_with_wider_unet(folder, StableDiffusionInpaintPipeline, 9, seed)


def save_tiny_instruct_pix2pix(folder: Path, seed: int = 2) -> Path:
    """A tiny InstructPix2Pix model, saved as timbrooks/instruct-pix2pix is: SD1's
    components, its UNet taking 8 channels (the noisy latents and the picture's)."""
    return _save_with_wider_unet(folder, StableDiffusionInstructPix2PixPipeline, 8, seed)


def _save_with_wider_unet(folder: Path, pipeline_cls: Any, in_channels: int, seed: int) -> Path:
    """The tiny SD1's components around a UNet taking `in_channels`, as `pipeline_cls`."""
    with tempfile.TemporaryDirectory() as workdir:
        base = build_tiny_sd1(Path(workdir), seed=seed)
        torch.manual_seed(seed)
        pipeline_cls(
            vae=base.vae,
            text_encoder=base.text_encoder,
            tokenizer=base.tokenizer,
            unet=_unet(in_channels=in_channels),
            scheduler=base.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        ).save_pretrained(str(folder))
    return folder


def save_tiny_upscaler(folder: Path, seed: int = 0) -> Path:
    """A tiny SD x4 upscaler: the low-resolution image is concatenated to the latents (7
    channels), its noise level is a class label, and a three-block VAE scales by 4."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as workdir:
        tokenizer = tiny_tokenizer(Path(workdir) / "tokenizer-src")
        vae = AutoencoderKL(
            block_out_channels=(32, 32, 64),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            latent_channels=4,
            norm_num_groups=32,
            scaling_factor=0.08333,
        )
        unet = _unet(
            in_channels=7,
            num_class_embeds=400,  # noise levels up to max_noise_level
            use_linear_projection=True,
        )
        StableDiffusionUpscalePipeline(
            vae=vae,
            text_encoder=CLIPTextModel(_text_config(tokenizer)),
            tokenizer=tokenizer,
            unet=unet,
            low_res_scheduler=DDPMScheduler(),
            scheduler=DDIMScheduler(prediction_type="v_prediction"),
            max_noise_level=350,
        ).save_pretrained(str(folder))
    return folder

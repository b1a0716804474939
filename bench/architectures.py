"""Full-size SD 1.5 and SDXL architectures with random weights, for benchmarks: speed and
memory do not depend on what the weights learned, and nothing is downloaded.

Built under a device and dtype so that a GPU initialises its own weights (seconds) instead of
the CPU initialising 3.5 billion fp32 parameters and copying them over.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from engine.pipelines.tiny import SD_BETAS, build_tiny_sd1, build_tiny_sdxl, tiny_tokenizer


@contextlib.contextmanager
def made_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def _clip(tokenizer: object, hidden: int, layers: int, heads: int, act: str) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,  # type: ignore[attr-defined]
        eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
        pad_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
    )


def sd_vae(sample_size: int, **extra: Any) -> AutoencoderKL:
    """Stable Diffusion's VAE (SD 1.x, 2.x and SDXL share its shape: 84M parameters)."""
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=sample_size,
        **extra,
    )


def sd15_architecture(tokenizer_dir: Path) -> StableDiffusionPipeline:
    """SD 1.5's UNet (860M parameters), VAE and CLIP ViT-L text encoder, random weights, in
    memory (the tokenizer's files are written to `tokenizer_dir`)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    tokenizer = tiny_tokenizer(tokenizer_dir)  # speed does not depend on the vocabulary
    pipe = StableDiffusionPipeline(
        vae=sd_vae(512),
        text_encoder=CLIPTextModel(_clip(tokenizer, 768, 12, 12, "quick_gelu")),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(**SD_BETAS),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_architecture(tokenizer_dir: Path) -> StableDiffusionXLPipeline:
    """SDXL base 1.0's UNet (2.6B parameters), VAE, CLIP ViT-L and OpenCLIP ViT-bigG text
    encoders, configured as stabilityai/stable-diffusion-xl-base-1.0's config files are."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=128,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        cross_attention_dim=2048,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    tokenizer = tiny_tokenizer(tokenizer_dir / "one")
    tokenizer_2 = tiny_tokenizer(tokenizer_dir / "two", pad_token="!")
    pipe = StableDiffusionXLPipeline(
        vae=sd_vae(1024, scaling_factor=0.13025, force_upcast=True),
        text_encoder=CLIPTextModel(_clip(tokenizer, 768, 12, 12, "quick_gelu")),
        text_encoder_2=CLIPTextModelWithProjection(_clip(tokenizer_2, 1280, 32, 20, "gelu")),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(**SD_BETAS, timestep_spacing="leading"),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build(
    family: str, tiny: bool, device: torch.device, dtype: torch.dtype, workdir: Path
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """The family's full architecture (or the test suite's tiny model), made on `device`."""
    with made_on(device, dtype):
        if tiny:
            pipe = build_tiny_sdxl(workdir) if family == "sdxl" else build_tiny_sd1(workdir)
        else:
            pipe = sdxl_architecture(workdir) if family == "sdxl" else sd15_architecture(workdir)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)  # made in `dtype` already

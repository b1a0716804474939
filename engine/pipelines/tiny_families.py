"""Tiny randomly initialised SD 3 and FLUX.1 pipelines, built offline.

The shapes of diffusers' own tests (tests/pipelines/stable_diffusion_3 and tests/pipelines/
flux), with the parts that matter here as the real models have them: 16 latent channels,
2x2 patches (FLUX packs them into its sequence), three text encoders for SD 3 (CLIP-L,
CLIP-G, T5) and two for FLUX (CLIP-L pooled, T5), FLUX.1 dev's guidance embedding and
schnell without one, and each family's own flow-matching scheduler settings. The T5
tokenizer is a small Unigram vocabulary built in code, so nothing is downloaded. A 64x64,
4-step call takes well under a second on a CPU; the images are noise.
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from engine.api.families import ModelFamily
from engine.pipelines.tiny import save_tiny_model, tiny_tokenizer, tiny_vae

FLOW_FAMILIES: tuple[ModelFamily, ...] = ("sd3", "flux", "flux-schnell")
T5_WIDTH = 64
CLIP_WIDTH = 32
# The scheduler configs the real repos ship (scheduler/scheduler_config.json).
SD3_SCHEDULER: dict[str, Any] = {"shift": 3.0}
FLUX_DEV_SCHEDULER: dict[str, Any] = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}
FLUX_SCHNELL_SCHEDULER: dict[str, Any] = {"shift": 1.0, "use_dynamic_shifting": False}
_WORDS = "a the cat dog red cube on table of and with in blue lighthouse sea stormy"


def tiny_t5_tokenizer(max_length: int = 512) -> T5Tokenizer:
    """A Unigram vocabulary of ~80 pieces with T5's special tokens first (pad 0, eos 1)."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(char, -3.0) for char in string.ascii_lowercase + string.digits + ",.:()[]!?-'"]
    vocab += [("▁" + word, -1.0) for word in _WORDS.split()]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def _t5(tokenizer: T5Tokenizer) -> T5EncoderModel:
    # transformers' configs take their fields as keywords mypy cannot see: given as a dict.
    config: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "d_model": T5_WIDTH,
        "d_kv": 16,
        "d_ff": 96,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.pad_token_id,
    }
    return T5EncoderModel(T5Config(**config))


def _clip_config(tokenizer: CLIPTokenizer, width: int = CLIP_WIDTH) -> CLIPTextConfig:
    config: dict[str, Any] = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.eos_token_id,
        "hidden_size": width,
        "intermediate_size": 37,
        "layer_norm_eps": 1e-5,
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "vocab_size": 1000,
        "hidden_act": "gelu",
        "max_position_embeddings": 77,
        "projection_dim": width,
    }
    return CLIPTextConfig(**config)


def _vae(shift: float, scale: float) -> AutoencoderKL:
    """16 latent channels as the real ones, and their shift and scale."""
    return tiny_vae(
        latent_channels=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=shift,
        scaling_factor=scale,
    )


def build_tiny_flux(workdir: Path, seed: int = 0, schnell: bool = False) -> FluxPipeline:
    """FLUX.1 dev (guidance embedding) or schnell (none): CLIP-L's pooled output and T5's
    sequence condition a transformer of double- and single-stream blocks."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(workdir / "clip-src")
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 channels in 2x2 patches
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=CLIP_WIDTH,
        guidance_embeds=not schnell,
        axes_dims_rope=(4, 4, 8),
    )
    scheduler = FLUX_SCHNELL_SCHEDULER if schnell else FLUX_DEV_SCHEDULER
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**scheduler),
        vae=_vae(shift=0.1159, scale=0.3611),
        text_encoder=CLIPTextModel(_clip_config(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=_t5(tiny_t5_tokenizer()),
        tokenizer_2=tiny_t5_tokenizer(),
        transformer=transformer,
    )


def build_tiny_sd3(workdir: Path, seed: int = 0) -> StableDiffusion3Pipeline:
    """SD 3's MMDiT over CLIP-L and CLIP-G (penultimate layers side by side, pooled outputs
    concatenated) and T5, with classifier-free guidance."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(workdir / "clip-src")
    tokenizer_2 = tiny_tokenizer(workdir / "clip-2-src", pad_token="!")
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=T5_WIDTH,  # CLIP-L + CLIP-G side by side is as wide as T5 here
        pooled_projection_dim=2 * CLIP_WIDTH,
        # Room for 256 pixels a side through the tiny VAE's 2x (a real SD 3.5 reaches 3072):
        # the tests' upscales and pans.
        pos_embed_max_size=64,
    )
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
        vae=_vae(shift=0.0609, scale=1.5305),
        text_encoder=CLIPTextModelWithProjection(_clip_config(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(tokenizer_2)),
        tokenizer_2=tokenizer_2,
        text_encoder_3=_t5(tiny_t5_tokenizer(256)),
        tokenizer_3=tiny_t5_tokenizer(256),
        transformer=transformer,
    )


def build_tiny_family(workdir: Path, family: ModelFamily, seed: int = 0) -> Any:
    if family == "sd3":
        return build_tiny_sd3(workdir, seed)
    if family in ("flux", "flux-schnell"):
        return build_tiny_flux(workdir, seed, schnell=family == "flux-schnell")
    raise ValueError(f"{family} is not a flow-matching family; see engine/pipelines/tiny.py")


def save_tiny_family(folder: Path, family: ModelFamily = "sd1", seed: int = 0) -> Path:
    """A tiny pipeline of any family saved as a diffusers folder; returns the folder."""
    if family not in FLOW_FAMILIES:
        return save_tiny_model(folder, family, seed)
    with tempfile.TemporaryDirectory() as workdir:
        build_tiny_family(Path(workdir), family, seed).save_pretrained(str(folder))
    return folder

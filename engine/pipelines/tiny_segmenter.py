"""A tiny randomly initialised CLIPSeg, built offline, for Vary (Region)'s tests.

Saved with `save_pretrained` (model and processor) and loaded back through
engine/pipelines/segment.py's `from_pretrained`, as an owner's SDBOT_SEGMENTER is. Random
weights know no sky; the output layer is set so that its map still makes partial masks:
one value per patch (a trained map is smooth, not speckled), scaled up so patches disagree,
and centred so that about half of a typical picture scores above the threshold. A `blind`
one scores every pixel near 0, so every region matches nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import (
    CLIPSegConfig,
    CLIPSegForImageSegmentation,
    CLIPSegProcessor,
    ViTImageProcessor,
)

from engine.imaging.masks import REGION_PROBABILITY
from engine.pipelines.tiny import tiny_tokenizer

SIDE = 64  # the model's square input, as CIDAS/clipseg-rd64-refined's is 352
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]
# How far the output layer is scaled: the random map then spans several logits.
_SPREAD = 8.0
_BLIND_BIAS = -1e4


def _config(tokenizer_ids: tuple[int, int]) -> CLIPSegConfig:
    bos, eos = tokenizer_ids
    text = {
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 1000,
        "max_position_embeddings": 77,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "image_size": SIDE,
        "patch_size": 8,
    }
    config: dict[str, Any] = {
        "text_config": text,
        "vision_config": vision,
        "projection_dim": 32,
        "extract_layers": [1],
        "reduce_dim": 16,
        "decoder_num_attention_heads": 2,
        "decoder_intermediate_size": 32,
    }
    return CLIPSegConfig(**config)


def _calibration_logits(
    model: CLIPSegForImageSegmentation, processor: CLIPSegProcessor
) -> torch.Tensor:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))] * 2
    inputs = processor(
        text=["the sky", "her hat"], images=images, return_tensors="pt", padding=True
    )
    with torch.no_grad():
        return model(**inputs).logits


def save_tiny_segmenter(folder: Path, *, seed: int = 0, blind: bool = False) -> Path:
    """Build a tiny CLIPSeg and its processor, save them in `folder`, return it."""
    tokenizer = tiny_tokenizer(folder / "tokenizer")
    processor = CLIPSegProcessor(
        image_processor=ViTImageProcessor(
            size={"height": SIDE, "width": SIDE},
            image_mean=_IMAGENET_MEAN,
            image_std=_IMAGENET_STD,
        ),
        tokenizer=tokenizer,
    )
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(
        _config((tokenizer.bos_token_id, tokenizer.eos_token_id))
    ).eval()
    output = model.decoder.transposed_convolution
    assert isinstance(output, torch.nn.ConvTranspose2d)
    assert output.bias is not None
    with torch.no_grad():
        # One value per patch, as a trained model's map is smooth rather than speckled.
        flat = output.weight.mean(dim=(2, 3), keepdim=True).expand_as(output.weight)
        output.weight.copy_(flat * _SPREAD * output.weight.shape[-1])
        if blind:
            output.bias.fill_(_BLIND_BIAS)
        else:
            threshold = math.log(REGION_PROBABILITY / (1 - REGION_PROBABILITY))
            output.bias.sub_(_calibration_logits(model, processor).median() - threshold)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder

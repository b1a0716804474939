"""A tiny randomly initialised BLIP captioner and CLIP ranker, built offline, for /describe's
tests.

Each is saved with `save_pretrained` (model and processor) and loaded back through
engine/pipelines/describe.py's `from_pretrained`, as an owner's SDBOT_CAPTIONER and
SDBOT_CLIP_RANKER are. BLIP's tokenizer is BERT's WordPiece, built here from a small
vocab.txt of everyday words (its captions are those words in a random order); CLIP's is the
tiny byte-level BPE the tiny Stable Diffusion models use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
    BlipProcessor,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
)

from engine.pipelines.tiny import tiny_tokenizer

SIDE = 32  # both models' square input (BLIP's is 384, CLIP ViT-L/14's 224)
_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_WORDS = tuple(
    " ".join(
        (
            "a an the of in on with and at by near under over two three cat dog bird horse",
            "woman man girl boy child person people face portrait house city street road tree",
            "forest field flower garden river lake sea beach mountain sky cloud sun moon",
            "night day snow rain fire water car boat red blue green yellow black white orange",
            "purple small large old young painting picture photo drawing sitting standing",
            "walking looking flying",
        )
    ).split()
)
_DEC = "[DEC]"  # BLIP's decoder start token, last in its vocabulary as in Salesforce's
_SMALL = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4}


def write_blip_vocab(folder: Path) -> Path:
    """BERT's special tokens, the words, then [DEC]: one token a line."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join([*_SPECIALS, *_WORDS, _DEC]) + "\n", encoding="utf-8")
    return vocab


def _blip_config(tokenizer: Any) -> BlipConfig:
    text = {
        **_SMALL,
        "vocab_size": len(tokenizer),
        "num_hidden_layers": 2,
        "max_position_embeddings": 64,
        "bos_token_id": tokenizer.convert_tokens_to_ids(_DEC),
        "pad_token_id": tokenizer.pad_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }
    vision = {**_SMALL, "num_hidden_layers": 2, "image_size": SIDE, "patch_size": 8}
    config: dict[str, Any] = {"text_config": text, "vision_config": vision, "projection_dim": 32}
    return BlipConfig(**config)


def save_tiny_captioner(folder: Path, *, seed: int = 0) -> Path:
    """Build a tiny BLIP captioner and its processor, save them in `folder`, return it."""
    vocab = write_blip_vocab(folder / "vocab")
    tokenizer = BertTokenizer.from_pretrained(
        str(vocab.parent), bos_token=_DEC, model_max_length=64
    )
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": SIDE, "width": SIDE}),
        tokenizer=tokenizer,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(_blip_config(tokenizer)).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_ranker(folder: Path, *, seed: int = 0) -> Path:
    """Build a tiny CLIP (both towers) and its processor, save them in `folder`, return it."""
    tokenizer = tiny_tokenizer(folder / "tokenizer")
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE}
        ),
        tokenizer=tokenizer,
    )
    text = {
        **_SMALL,
        "num_hidden_layers": 2,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {**_SMALL, "num_hidden_layers": 2, "image_size": SIDE, "patch_size": 8}
    torch.manual_seed(seed)
    config: dict[str, Any] = {"text_config": text, "vision_config": vision, "projection_dim": 32}
    model = CLIPModel(CLIPConfig(**config)).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder

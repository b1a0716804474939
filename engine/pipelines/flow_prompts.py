"""Prompts for SD 3 and FLUX.1, encoded as diffusers encodes them, with A1111's emphasis.

diffusers' `encode_prompt` of StableDiffusion3Pipeline and FluxPipeline, step for step:
CLIP reads 77 tokens (BOS, up to 75, EOS, padding), T5 up to the family's sequence length
(EOS, padding; no attention mask), SD 3 sets CLIP-L's and CLIP-G's penultimate layers side
by side, pads them to T5's width and puts T5's sequence after them, its pooled vector is
both CLIPs' projections; FLUX reads only CLIP-L's pooled output and T5's sequence. A prompt
without brackets encodes to exactly what diffusers makes of it.

Emphasis, `(word:1.2)` and `[word]`, is applied as Forge applies it to these models (its
T5 text engine, A1111's "Original" emphasis): every token's embedding is scaled by its
weight and the mean restored, for CLIP's sequences and T5's alike. The pooled vectors are
made from the words without the brackets, weightless, as A1111 makes SDXL's. The rest of
A1111's language (BREAK, prompt editing, AND) is refused at submit
(engine/api/family_checks.py). Engine thread only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.api.families import Family
from engine.api.prompt_syntax import Fragment, parse_attention
from engine.pipelines.prompts import apply_emphasis

CLIP_LENGTH = 77


@dataclass(frozen=True, slots=True)
class FlowConditioning:
    """One prompt as the transformer reads it: (1, tokens, width) and the pooled (1, width)."""

    embeds: torch.Tensor
    pooled: torch.Tensor


@dataclass(frozen=True, slots=True)
class _Tokens:
    ids: list[int]
    weights: list[float]

    @property
    def plain(self) -> bool:
        return all(weight == 1.0 for weight in self.weights)


def weighted_tokens(tokenizer: Any, fragments: Sequence[Fragment], length: int) -> _Tokens:
    """The fragments' tokens with their weights, framed as the tokenizer frames a text
    (`bos` when it has one, `eos`), cut and padded to `length` as diffusers' truncation and
    `padding="max_length"` do."""
    token_lists = tokenizer(
        [fragment.text for fragment in fragments],
        add_special_tokens=False,
        truncation=False,
        verbose=False,
    )["input_ids"]
    ids: list[int] = []
    weights: list[float] = []
    for fragment, tokens in zip(fragments, token_lists, strict=True):
        ids += tokens
        weights += [fragment.weight] * len(tokens)
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
    room = length - len(bos) - 1
    ids, weights = bos + ids[:room] + [tokenizer.eos_token_id], [1.0] * len(bos) + weights[:room]
    weights.append(1.0)
    padding = length - len(ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return _Tokens(ids + [pad] * padding, weights + [1.0] * padding)


class FlowPromptEncoder:
    """Encodes prompts for one loaded SD 3 or FLUX pipeline."""

    def __init__(self, pipe: Any, row: Family) -> None:
        self.pipe = pipe
        self.row = row

    @torch.inference_mode()
    def encode(self, text: str) -> FlowConditioning:
        fragments = [f for f in parse_attention(text) if not f.is_break]  # BREAK: refused
        if self.row.name == "sd3":
            return self._sd3(fragments)
        return self._flux(fragments)

    def _flux(self, fragments: list[Fragment]) -> FlowConditioning:
        pipe = self.pipe
        output, _ = _clip(pipe.tokenizer, pipe.text_encoder, fragments)
        t5 = self._t5(pipe.tokenizer_2, pipe.text_encoder_2, fragments)
        return FlowConditioning(t5, output.pooler_output.to(pipe.text_encoder.dtype))

    def _sd3(self, fragments: list[Fragment]) -> FlowConditioning:
        pipe = self.pipe
        clip_l, pooled_l = _penultimate(pipe.tokenizer, pipe.text_encoder, fragments)
        clip_g, pooled_g = _penultimate(pipe.tokenizer_2, pipe.text_encoder_2, fragments)
        if pipe.text_encoder_3 is None:  # SD 3 runs without T5; diffusers then reads zeros
            width = pipe.transformer.config.joint_attention_dim
            t5 = torch.zeros((1, CLIP_LENGTH, width), device=clip_l.device, dtype=clip_l.dtype)
        else:
            t5 = self._t5(pipe.tokenizer_3, pipe.text_encoder_3, fragments)
        clip = torch.cat([clip_l, clip_g], dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        embeds = torch.cat([clip.to(t5.dtype), t5], dim=-2)
        return FlowConditioning(embeds, torch.cat([pooled_l, pooled_g], dim=-1))

    def _t5(self, tokenizer: Any, encoder: Any, fragments: list[Fragment]) -> torch.Tensor:
        tokens = weighted_tokens(tokenizer, fragments, self.row.prompt_tokens)
        z = encoder(_ids(tokens, encoder), output_hidden_states=False)[0]
        return _emphasised(z, tokens).to(encoder.dtype)


def _clip(tokenizer: Any, encoder: Any, fragments: list[Fragment]) -> tuple[Any, _Tokens]:
    tokens = weighted_tokens(tokenizer, fragments, CLIP_LENGTH)
    return encoder(_ids(tokens, encoder), output_hidden_states=True), tokens


def _penultimate(
    tokenizer: Any, encoder: Any, fragments: list[Fragment]
) -> tuple[torch.Tensor, torch.Tensor]:
    """SD 3's reading of a CLIP: its penultimate layer, emphasis applied, and its
    projection (from the same tokens: the weights change only the sequence)."""
    output, tokens = _clip(tokenizer, encoder, fragments)
    embeds = _emphasised(output.hidden_states[-2], tokens)
    return embeds.to(encoder.dtype), output[0].to(encoder.dtype)


def _ids(tokens: _Tokens, encoder: Any) -> torch.Tensor:
    return torch.tensor([tokens.ids], device=encoder.device)


def _emphasised(z: torch.Tensor, tokens: _Tokens) -> torch.Tensor:
    if tokens.plain:
        return z
    weights = torch.tensor(tokens.weights, dtype=torch.float32, device=z.device)
    return apply_emphasis(z[0], weights).unsqueeze(0)

"""Prompts as members write them, turned into the embeddings A1111 would make of them.

Two syntaxes:

- A1111's (modules/prompt_parser.py `parse_prompt_attention`, modules/sd_hijack_clip.py,
  modules/sd_emphasis.py "Original"): `(word)` x1.1, `[word]` /1.1, `(word:1.3)`, nesting,
  `\\(` escapes and `BREAK`. The text is cut into 75-token chunks (backing up to a nearby
  comma rather than splitting words), each chunk is encoded as its own 77-token CLIP
  sequence, the weights multiply the token embeddings, the mean is restored, and the chunks
  are concatenated.
- The optimized fork's (basujindal/stable-diffusion, optimizedSD): `cute dog:0.95 cyborg:0.85`
  encodes each sub-prompt on its own and sums the conditionings, weighted and normalized by
  the sum of the weights.

Prompt editing, alternation and AND are read before this (engine/pipelines/
scheduled_conditioning.py): each text a schedule holds is encoded here like any prompt.

Runs on the engine thread (the encoders live on the GPU); the parsing half needs no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.api.prompt_syntax import (
    Fragment,
    parse_attention,
    resolve_syntax,
    split_subprompts,
)
from engine.api.specs import ModelFamily

CHUNK_LENGTH = 75  # CLIP reads 77 tokens: BOS, 75 of the prompt, EOS
COMMA_PADDING_BACKTRACK = 20  # A1111's default `comma_padding_backtrack`

# -- 75-token chunks ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chunk:
    """Up to 75 prompt tokens and their weights, before BOS/EOS and padding."""

    tokens: tuple[int, ...]
    weights: tuple[float, ...]


class _ChunkBuilder:
    def __init__(self, comma_token: int | None, backtrack: int) -> None:
        self.comma_token = comma_token
        self.backtrack = backtrack
        self.chunks: list[Chunk] = []
        self.tokens: list[int] = []
        self.weights: list[float] = []
        self.last_comma = -1

    def close(self) -> None:
        self.chunks.append(Chunk(tuple(self.tokens), tuple(self.weights)))
        self.tokens, self.weights = [], []
        self.last_comma = -1

    def add(self, token: int, weight: float) -> None:
        if token == self.comma_token:
            self.last_comma = len(self.tokens)
        elif self._should_back_up():
            # Move the words after the last comma to the next chunk, so no phrase is cut in
            # two (A1111's comma_padding_backtrack).
            cut = self.last_comma + 1
            moved_tokens, moved_weights = self.tokens[cut:], self.weights[cut:]
            del self.tokens[cut:], self.weights[cut:]
            self.close()
            self.tokens, self.weights = moved_tokens, moved_weights
        if len(self.tokens) == CHUNK_LENGTH:
            self.close()
        self.tokens.append(token)
        self.weights.append(weight)

    def _should_back_up(self) -> bool:
        return (
            self.backtrack != 0
            and len(self.tokens) == CHUNK_LENGTH
            and self.last_comma != -1
            and len(self.tokens) - self.last_comma <= self.backtrack
        )


def split_chunks(
    fragments: Sequence[Fragment],
    token_lists: Sequence[Sequence[int]],
    comma_token: int | None,
    backtrack: int = COMMA_PADDING_BACKTRACK,
) -> list[Chunk]:
    """Lay the fragments' tokens into 75-token chunks as A1111's `tokenize_line` does.

    A BREAK closes the chunk in progress (even an empty one); an empty prompt is one empty
    chunk; a chunk that ends exactly at the end of the prompt is not followed by an empty one.
    """
    builder = _ChunkBuilder(comma_token, backtrack)
    for fragment, tokens in zip(fragments, token_lists, strict=True):
        if fragment.is_break:
            builder.close()
            continue
        for token in tokens:
            builder.add(token, fragment.weight)
    if builder.tokens or not builder.chunks:
        builder.close()
    return builder.chunks


def frame_chunk(chunk: Chunk, bos: int, eos: int, pad: int) -> tuple[list[int], list[float]]:
    """BOS + tokens + EOS, padded to 77. SD1 pads with EOS; SD2 and SDXL's second encoder
    pad with their pad token after the first EOS, as both A1111 and diffusers do."""
    padding = CHUNK_LENGTH - len(chunk.tokens)
    tokens = [bos, *chunk.tokens, eos] + [pad] * padding
    weights = [1.0, *chunk.weights, 1.0] + [1.0] * padding
    return tokens, weights


# -- Encoding -------------------------------------------------------------------------------


def apply_emphasis(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis: scale each token's embedding by its weight, then bring the
    mean back to what it was (`z * (original_mean / new_mean)`), which keeps strong weights
    from washing the image out."""
    original_mean = z.mean()
    # `weights` is float32, as A1111's multipliers are: in fp16 the product is float32 too.
    z = z * weights.unsqueeze(-1).expand(z.shape)
    new_mean = z.mean()
    if new_mean == 0:  # only reachable with weights that cancel out; A1111 would give NaNs
        return z
    return z * (original_mean / new_mean)


@dataclass(frozen=True, slots=True)
class TextEncoder:
    """One CLIP text encoder and the layer A1111 reads from it.

    `skip` counts layers from the end as A1111 does (1 = the last layer's output after the
    final layer norm); `final_norm` says whether a skipped-to layer goes through the final
    layer norm (SD1's clip skip) or is used as is (SDXL's penultimate layer).
    """

    tokenizer: Any
    model: Any
    skip: int = 1
    final_norm: bool = True
    pooled: bool = False

    def chunks(self, fragments: Sequence[Fragment]) -> list[Chunk]:
        # verbose=False: a long prompt is meant to be longer than 77 tokens; no warning.
        token_lists = self.tokenizer(
            [fragment.text for fragment in fragments],
            truncation=False,
            add_special_tokens=False,
            verbose=False,
        )["input_ids"]
        return split_chunks(fragments, token_lists, self._comma_token())

    def _comma_token(self) -> int | None:
        token = self.tokenizer.convert_tokens_to_ids(",</w>")
        return None if token is None or token == self.tokenizer.unk_token_id else int(token)

    @torch.inference_mode()
    def encode(self, chunks: Sequence[Chunk]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(chunks, 77, width) embeddings with emphasis applied, and the pooled embedding of
        each chunk (for SDXL's second encoder; made before emphasis, as in A1111)."""
        tokenizer = self.tokenizer
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        framed = [frame_chunk(chunk, tokenizer.bos_token_id, eos, pad) for chunk in chunks]
        device = self.model.device
        ids = torch.tensor([tokens for tokens, _ in framed], device=device)
        weights = torch.tensor([w for _, w in framed], dtype=torch.float32, device=device)
        output = self.model(ids, output_hidden_states=self.skip > 1)
        if self.skip == 1:
            z = output.last_hidden_state
        else:
            hidden = output.hidden_states
            z = hidden[-min(self.skip, len(hidden))]
            if self.final_norm:
                # transformers 5.6 flattened CLIPTextModel (no .text_model): work with both.
                z = getattr(self.model, "text_model", self.model).final_layer_norm(z)
        pooled = output.text_embeds if self.pooled else None
        # Each chunk on its own, as A1111 encodes them one chunk at a time.
        z = torch.stack([apply_emphasis(z[i], weights[i]) for i in range(len(chunks))])
        return z, pooled


def text_encoders(pipe: Any, family: ModelFamily, clip_skip: int = 1) -> list[TextEncoder]:
    """The encoders A1111 uses for a family, reading the layers A1111 reads.

    SD1 honours clip skip. SD2's diffusers encoder already ends at OpenCLIP's penultimate
    layer (its config drops the last one), which is what A1111 reads; A1111 applies no clip
    skip to it, nor to SDXL, which always reads the penultimate layer of both encoders.
    """
    if family == "sdxl":
        return [
            TextEncoder(pipe.tokenizer, pipe.text_encoder, skip=2, final_norm=False),
            TextEncoder(
                pipe.tokenizer_2, pipe.text_encoder_2, skip=2, final_norm=False, pooled=True
            ),
        ]
    skip = clip_skip if family == "sd1" else 1
    return [TextEncoder(pipe.tokenizer, pipe.text_encoder, skip=skip)]


@dataclass(frozen=True, slots=True)
class Conditioning:
    """What the UNet reads for one prompt: (1, 77 * chunks, width), and SDXL's pooled (1, w)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def chunks(self) -> int:
        return self.embeds.shape[1] // (CHUNK_LENGTH + 2)

    def zeros(self) -> Conditioning:
        pooled = None if self.pooled is None else torch.zeros_like(self.pooled)
        return Conditioning(torch.zeros_like(self.embeds), pooled)


@dataclass(frozen=True, slots=True)
class PromptPair:
    """A job's prompt and negative prompt, padded to the same number of chunks."""

    positive: Conditioning
    negative: Conditioning

    @property
    def chunks(self) -> int:
        return self.positive.chunks


class PromptEncoder:
    """Encodes prompts for one loaded pipeline with A1111's (or the optimized fork's) rules."""

    def __init__(self, pipe: Any, family: ModelFamily, clip_skip: int = 1) -> None:
        self.family = family
        self.encoders = text_encoders(pipe, family, clip_skip)
        self._empty: Conditioning | None = None

    def encode_pair(self, prompt: str, negative: str, syntax: str = "a1111") -> PromptPair:
        """Both prompts of a job, padded with empty chunks to the same length.

        SDXL's empty negative prompt is all zeros, as A1111 makes it (and diffusers with
        `force_zeros_for_empty_prompt`). diffusers needs both the same shape; A1111 pads the
        same way with its "pad prompt/negative prompt" option, and zeros pad to zeros.
        """
        positive = self.encode(prompt, syntax)
        if self.family == "sdxl" and negative == "":
            return PromptPair(positive, positive.zeros())
        negative_cond = self.encode(negative, syntax)
        chunks = max(positive.chunks, negative_cond.chunks)
        return PromptPair(self.pad(positive, chunks), self.pad(negative_cond, chunks))

    def encode(self, text: str, syntax: str = "a1111") -> Conditioning:
        if resolve_syntax(text, syntax) == "subprompt":
            return self.encode_subprompts(text)
        return self.encode_a1111(text)

    def encode_a1111(self, text: str) -> Conditioning:
        fragments = parse_attention(text)
        per_encoder = [encoder.chunks(fragments) for encoder in self.encoders]
        # Encoders share CLIP's vocabulary, so their chunks agree; should a tokenizer differ,
        # the shorter list is padded with empty chunks rather than failing.
        count = max(len(chunks) for chunks in per_encoder)
        widths: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for encoder, chunks in zip(self.encoders, per_encoder, strict=True):
            padded = [*chunks, *[Chunk((), ())] * (count - len(chunks))]
            z, chunk_pooled = encoder.encode(padded)
            widths.append(z)
            if chunk_pooled is not None:
                pooled = chunk_pooled[:1]  # SDXL's pooled embedding is the first chunk's
        z = torch.cat(widths, dim=-1)  # SDXL: CLIP-L and CLIP-G side by side, per token
        return Conditioning(z.reshape(1, -1, z.shape[-1]), pooled)

    def encode_subprompts(self, text: str) -> Conditioning:
        """The optimized fork's weighted sum; with fewer than two sub-prompts it encodes the
        whole text as it is, as the fork does."""
        parts = split_subprompts(text)
        if len(parts) < 2:
            return self.encode_a1111(text)
        conds = [self.encode_a1111(part) for part, _ in parts]
        chunks = max(cond.chunks for cond in conds)
        conds = [self.pad(cond, chunks) for cond in conds]
        total = sum(weight for _, weight in parts)
        # A zero total would divide by zero (the fork fails); use the weights as given then.
        scales = [weight / total if total != 0 else weight for _, weight in parts]
        embeds = torch.zeros_like(conds[0].embeds)
        for cond, scale in zip(conds, scales, strict=True):
            embeds = torch.add(embeds, cond.embeds, alpha=scale)
        pooled = None
        if conds[0].pooled is not None:
            pooled = torch.zeros_like(conds[0].pooled)
            for cond, scale in zip(conds, scales, strict=True):
                assert cond.pooled is not None
                pooled = torch.add(pooled, cond.pooled, alpha=scale)
        return Conditioning(embeds, pooled)

    def empty(self) -> Conditioning:
        if self._empty is None:
            self._empty = self.encode_a1111("")
        return self._empty

    def pad(self, cond: Conditioning, chunks: int) -> Conditioning:
        """Append empty-prompt chunks (A1111's padding) up to `chunks`."""
        missing = chunks - cond.chunks
        if missing <= 0:
            return cond
        empty = self.empty().embeds.to(cond.embeds.dtype)
        return Conditioning(torch.cat([cond.embeds, *[empty] * missing], dim=1), cond.pooled)

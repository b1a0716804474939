"""Textual-inversion embeddings loaded for one generation and taken out again afterwards.

Engine thread only. A token left in the tokenizer would change how other members' prompts
are split, so the tokenizers and text encoders are put back exactly as they were (see
_Vocabulary). engine/pipelines/lora.py uses this for a batch's embeddings.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import torch

from engine.api.errors import EngineError

log = logging.getLogger(__name__)


def _token_pairs(pipe: Any) -> list[tuple[Any, Any]]:
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


@dataclass(frozen=True, slots=True)
class _Vocabulary:
    """One tokenizer and text encoder's vocabulary as it was before embeddings were loaded.

    transformers resizes the embedding table by swapping the weight's storage in place, to
    the tokenizer's length, which is not always the size the model shipped with (the tiny
    test models' tables are larger), and writes into it when no resize is needed. So the
    storage, its rows past the tokenizer's and the sizes are kept and put back: a reference
    and a few rows, not a copy of the table.
    """

    tokenizer: Any
    encoder: Any
    added_ids: frozenset[int]
    table: torch.nn.Embedding
    data: torch.Tensor
    rows: int
    padding_idx: int | None
    vocab_size: int
    tail_start: int
    tail: torch.Tensor

    @classmethod
    def of(cls, tokenizer: Any, encoder: Any) -> _Vocabulary:
        table = encoder.get_input_embeddings()
        data = table.weight.data
        start = min(len(tokenizer), data.shape[0])
        return cls(
            tokenizer,
            encoder,
            frozenset(tokenizer.added_tokens_decoder),
            table,
            data,
            table.num_embeddings,
            table.padding_idx,
            encoder.config.vocab_size,
            start,
            data[start:].clone(),
        )

    def restore(self, pipe: Any) -> None:
        added = [
            entry.content
            for index, entry in self.tokenizer.added_tokens_decoder.items()
            if index not in self.added_ids and not entry.special
        ]
        if added:
            pipe.unload_textual_inversion(
                added, tokenizer=self.tokenizer, text_encoder=self.encoder
            )
        self.encoder.set_input_embeddings(self.table)
        self.table.weight.data = self.data
        self.data[self.tail_start :] = self.tail
        self.table.num_embeddings = self.rows
        self.table.padding_idx = self.padding_idx
        self.encoder.config.vocab_size = self.vocab_size


@contextlib.contextmanager
def loaded_embeddings(pipe: Any, embeddings: Sequence[tuple[Path, str]]) -> Iterator[list[str]]:
    """Textual-inversion files loaded under their tokens; taken out again afterwards.

    Takes diffusers' `{token: tensor}`, A1111's files, and SDXL's `{clip_l, clip_g}` pairs.
    Afterwards the tokenizers and text encoders are exactly as before (see _Vocabulary).
    """
    if not embeddings:
        yield []
        return
    before = [_Vocabulary.of(tokenizer, encoder) for tokenizer, encoder in _token_pairs(pipe)]
    try:
        for path, token in embeddings:
            _load_embedding(pipe, path, token)
        yield [token for _, token in embeddings]
    finally:
        for vocabulary in before:
            vocabulary.restore(pipe)


def _load_embedding(pipe: Any, path: Path, token: str) -> None:
    try:
        if path.suffix.lower() == ".safetensors":
            with safetensors.safe_open(str(path), framework="pt") as handle:
                keys = set(handle.keys())
            if {"clip_l", "clip_g"} <= keys and getattr(pipe, "text_encoder_2", None) is not None:
                _load_sdxl_embedding(pipe, path, token)
                return
        pipe.load_textual_inversion(str(path), token=token)
    except Exception as error:  # diffusers raises ValueError, KeyError, OSError...
        log.exception("loading embedding %s failed", path)
        raise EngineError(f"Embedding {token} could not be loaded.") from error


def _load_sdxl_embedding(pipe: Any, path: Path, token: str) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path))
    for key, (tokenizer, encoder) in zip(("clip_l", "clip_g"), _token_pairs(pipe), strict=True):
        vectors = state[key]
        tokens = [token] + [f"{token}_{i}" for i in range(1, vectors.shape[0])]
        pipe.load_textual_inversion(
            vectors, token=tokens, tokenizer=tokenizer, text_encoder=encoder
        )

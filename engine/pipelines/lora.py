"""LoRAs and embeddings at generation time: A1111's `<lora:name:weight>` tags, applying
files to the loaded pipeline for one generation, and what infotext records of them.

Engine thread only (it changes the pipeline). Loaded LoRAs stay in the UNet/text encoder as
disabled peft adapters, cached by file version, so using one again costs only
`set_adapters`; outside `applied()` every adapter is disabled and the pipeline computes
exactly what it computes without them. Embeddings are loaded for the one generation and
unloaded afterwards: a token left in the tokenizer would change how other members'
prompts are split.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import torch

from engine.api.errors import EngineError
from engine.api.infotext import quote
from engine.api.lora_tags import parse_lora_tags
from engine.api.params import GenerationParams
from engine.pipelines.loading import LoadedModel

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 4  # LoRAs kept loaded; SD1.5 rank-8 LoRAs are ~6 MB each in VRAM
ADAPTERS = "adapters"  # the AdapterCache's key among a loaded model's derived objects


# -- Infotext ---------------------------------------------------------------------------------


def lora_short_hash(path: Path) -> str:
    """A1111's LoRA hash: the first 12 hex digits of the sha256 of a .safetensors file's
    tensor data (the header excluded; kohya's "addnet" hash), or of a whole other file.
    Files that carry it in their header (`sshs_model_hash`, as ours do) are not re-read."""
    if path.suffix.lower() == ".safetensors":
        with safetensors.safe_open(str(path), framework="pt") as handle:
            stored = (handle.metadata() or {}).get("sshs_model_hash")
        if stored:
            return stored[:12]
        with path.open("rb") as handle:
            header = int.from_bytes(handle.read(8), "little")
            handle.seek(8 + header)
            return _sha256_of(handle)[:12]
    with path.open("rb") as handle:
        return _sha256_of(handle)[:12]


def embedding_short_hash(path: Path) -> str:
    """A1111's embedding hash ("TI hashes"): the first 12 hex digits of the file's sha256."""
    with path.open("rb") as handle:
        return _sha256_of(handle)[:12]


def _sha256_of(handle: Any) -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _hash_list(items: Sequence[tuple[str, str]]) -> str:
    # A1111 drops `:` and `,` from the names, which would break its own parsing.
    return ", ".join(
        f"{name.replace(':', '').replace(',', '')}: {digest}" for name, digest in items
    )


def lora_hashes(loras: Sequence[tuple[str, Path]]) -> str:
    """The value of A1111's `Lora hashes` key: `name: 1234567890ab, other: ...`. Pass it
    unquoted as `build_infotext(..., extra={"Lora hashes": value})`, which quotes it."""
    return _hash_list([(name, lora_short_hash(path)) for name, path in loras])


def embedding_hashes(embeddings: Sequence[tuple[str, Path]]) -> str:
    """The value of A1111's `TI hashes` key (1.6+) for the embeddings a prompt used."""
    return _hash_list([(name, embedding_short_hash(path)) for name, path in embeddings])


def lora_infotext(loras: Sequence[tuple[str, Path]]) -> str:
    """`Lora hashes: "name: 1234567890ab, other: ..."`, as A1111 writes it after `RNG` and
    before `Version` on the parameters line (its extra_generation_params). The weights are
    not here: A1111 keeps the `<lora:name:weight>` tags in the infotext's prompt."""
    return f"Lora hashes: {quote(lora_hashes(loras))}" if loras else ""


def embedding_infotext(embeddings: Sequence[tuple[str, Path]]) -> str:
    """`TI hashes: "token: 1234567890ab"` for the embeddings a prompt used (A1111 1.6+)."""
    return f"TI hashes: {quote(embedding_hashes(embeddings))}" if embeddings else ""


# -- Applying files to the pipeline ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _FileVersion:
    path: str
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, path: Path) -> _FileVersion:
        stat = path.stat()
        return cls(str(path.resolve()), stat.st_mtime_ns, stat.st_size)

    @property
    def adapter_name(self) -> str:
        # peft keys modules by adapter name: no dots, and a new name for a new file version.
        key = f"{self.path}:{self.mtime_ns}:{self.size}".encode()
        return "lora_" + hashlib.sha256(key).hexdigest()[:16]


class Applied:
    """What `applied()` yields: turns prompts into what the loaded embeddings expect."""

    def __init__(self, pipe: Any, tokens: Sequence[str]) -> None:
        self._pipe = pipe
        self.tokens = list(tokens)

    def expand(self, prompt: str) -> str:
        """A multi-vector embedding's token written out as its N tokens (`tok tok_1 ...`),
        as diffusers' maybe_convert_prompt does: engine/pipelines/prompts.py tokenises the text
        itself, and one token only brings in the first vector otherwise."""
        if not self.tokens:
            return prompt
        return str(self._pipe.maybe_convert_prompt(prompt, self._pipe.tokenizer))


class AdapterCache:
    """LoRA adapters kept loaded on one pipeline, least recently used dropped past `capacity`.

    One per loaded model (the worker keeps it with the model and drops it when the model is
    released). It checks the pipeline's own list of adapters before reusing one, so
    whatever removed adapters behind its back (training unloads them all) costs only a
    reload.
    """

    def __init__(self, pipe: Any, capacity: int = DEFAULT_CAPACITY) -> None:
        self.pipe = pipe
        self.capacity = capacity
        self._loaded: OrderedDict[str, _FileVersion] = OrderedDict()
        self.loads = 0  # how many files were read; the tests check the cache works

    @contextlib.contextmanager
    def applied(
        self,
        loras: Sequence[tuple[Path, float]] = (),
        embeddings: Sequence[tuple[Path, str]] = (),
    ) -> Iterator[Applied]:
        """LoRA files at their weights and embeddings under their tokens, for one generation.

        A weight of 0 leaves the UNet's output exactly as without the LoRA. Raises
        EngineError naming the file's stem when a file cannot be loaded.
        """
        by_name: dict[str, float] = {}
        for path, weight in loras:  # the same file twice: its deltas add up
            name = self._adapter(path)
            by_name[name] = by_name.get(name, 0.0) + weight
        names, weights = list(by_name), list(by_name.values())
        self._evict(keep=set(names))  # never one this generation needs, even past capacity
        try:
            if names:
                self.pipe.enable_lora()
                self.pipe.set_adapters(names, weights)
            with loaded_embeddings(self.pipe, embeddings) as tokens:
                yield Applied(self.pipe, tokens)
        finally:
            if self._loaded:
                self.pipe.disable_lora()

    def _adapter(self, path: Path) -> str:
        version = _FileVersion.of(path)
        name = version.adapter_name
        if name in self._loaded and name in self._present():
            self._loaded.move_to_end(name)
            return name
        self._loaded.pop(name, None)
        try:
            with warnings.catch_warnings():
                # peft warns whenever a second adapter joins the first: that is the point here.
                warnings.filterwarnings("ignore", "Already found a `peft_config`", UserWarning)
                self.pipe.load_lora_weights(str(path), adapter_name=name)
        except Exception as error:  # diffusers and peft raise many types for a bad file
            log.exception("loading LoRA %s failed", path)
            with contextlib.suppress(Exception):
                self.pipe.delete_adapters([name])
            raise EngineError(f"LoRA {path.stem} could not be loaded.") from error
        self.loads += 1
        self._loaded[name] = version
        return name

    def _present(self) -> set[str]:
        return {name for names in self.pipe.get_list_adapters().values() for name in names}

    def _evict(self, keep: set[str]) -> None:
        present = self._present()
        for name in list(self._loaded):
            if len(self._loaded) <= self.capacity:
                break
            if name in keep:
                continue
            del self._loaded[name]
            if name in present:
                self.pipe.delete_adapters([name])

    def clear(self) -> None:
        """Unload every adapter: the pipeline is as it was before any LoRA was used."""
        self._loaded.clear()
        if self._present():
            self.pipe.unload_lora_weights()


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


def read_metadata(path: Path) -> dict[str, str]:
    """The header metadata of a LoRA or embedding file (ours under `sdbot.`)."""
    with safetensors.safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


# -- One generation's adapters ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActiveAdapters:
    """What the pipeline carries during one generation: how prompts must be written out for
    its embeddings, and the infotext keys that name its files."""

    applied: Applied
    infotext: dict[str, str]

    def expand(self, prompt: str) -> str:
        return self.applied.expand(prompt)


def adapter_infotext(params: GenerationParams) -> dict[str, str]:
    """A1111's `Lora hashes` and `TI hashes` for a job's adapters (empty without any)."""
    extra = {}
    if params.loras:
        extra["Lora hashes"] = lora_hashes([(name, Path(path)) for name, path, _ in params.loras])
    if params.embeddings:
        extra["TI hashes"] = embedding_hashes(
            [(token, Path(path)) for token, path in params.embeddings]
        )
    return extra


@contextlib.contextmanager
def adapters_for(loaded: LoadedModel, params: GenerationParams) -> Iterator[None]:
    """Apply a batch's LoRAs and embeddings to the loaded pipeline for its generation.

    While it lasts, `loaded.active` says how to write prompts out and what the infotext
    adds; afterwards the pipeline is as it was. The adapter cache lives with the model, so
    it goes when the model is unloaded.
    """
    if not params.loras and not params.embeddings:
        yield
        return
    cache = loaded.derived.get(ADAPTERS)
    if cache is None:
        cache = loaded.derived[ADAPTERS] = AdapterCache(loaded.pipe)
    loras = [(Path(path), weight) for _, path, weight in params.loras]
    embeddings = [(Path(path), token) for token, path in params.embeddings]
    with cache.applied(loras, embeddings) as applied:
        loaded.active = ActiveAdapters(applied, adapter_infotext(params))
        try:
            yield
        finally:
            loaded.active = None


def prompt_text(loaded: LoadedModel, text: str) -> str:
    """A prompt as the text encoder must read it: LoRA tags out (the adapters apply them),
    embeddings' tokens written out as all their vectors."""
    stripped, _ = parse_lora_tags(text)
    active = loaded.active
    return active.expand(stripped) if active is not None else stripped

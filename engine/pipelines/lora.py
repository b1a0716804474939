"""LoRAs at generation time: applying a batch's files to the loaded pipeline for one
generation, and what infotext records of them.

Engine thread only (it changes the pipeline). Loaded LoRAs stay in the UNet/text encoder as
disabled peft adapters, cached by file version, so using one again costs only
`set_adapters`; outside `applied()` every adapter is disabled and the pipeline computes
exactly what it computes without them. The files are diffusers' own, and kohya / A1111's
(`lora_unet_...`, LyCORIS LoCon), which diffusers' `load_lora_weights` converts itself.
Embeddings are in engine/pipelines/embeddings.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.api.errors import EngineError
from engine.api.hashes import FileHashCache, embedding_hashes, lora_hashes
from engine.api.lora_files import SAFETENSORS, LoraFileError, check_family, read_header
from engine.api.lora_tags import parse_lora_tags
from engine.api.params import GenerationParams
from engine.api.specs import ModelFamily
from engine.pipelines.embeddings import loaded_embeddings
from engine.pipelines.loading import LoadedModel

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 4  # LoRAs kept loaded; SD1.5 rank-8 LoRAs are ~6 MB each in VRAM
ADAPTERS = "adapters"  # the AdapterCache's key among a loaded model's derived objects


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
    reload. It keeps the files' A1111 hashes too, computed once per file version.
    """

    def __init__(
        self,
        pipe: Any,
        capacity: int = DEFAULT_CAPACITY,
        family: ModelFamily | None = None,
        model: str = "this model",
    ) -> None:
        """`family`, `model`: the loaded model's, to refuse a LoRA whose file says it is
        for another family in one sentence, before diffusers is asked."""
        self.pipe = pipe
        self.capacity = capacity
        self.family = family
        self.model = model
        self.hashes = FileHashCache()
        self._loaded: OrderedDict[str, _FileVersion] = OrderedDict()
        self.loads = 0  # how many files were read; the tests check the cache works

    @contextlib.contextmanager
    def applied(
        self,
        loras: Sequence[tuple[Path, float]] = (),
        embeddings: Sequence[tuple[Path, str]] = (),
        names: Mapping[Path, str] | None = None,
    ) -> Iterator[Applied]:
        """LoRA files at their weights and embeddings under their tokens, for one generation.

        A weight of 0 leaves the UNet's output exactly as without the LoRA. Raises
        EngineError naming the LoRA (by `names`, else the file's stem) when a file cannot
        be loaded; the pipeline is then as it was.
        """
        try:  # a file that fails after another loaded leaves that one disabled too
            by_name: dict[str, float] = {}
            for path, weight in loras:  # the same file twice: its deltas add up
                name = self._adapter(path, (names or {}).get(path, path.stem))
                by_name[name] = by_name.get(name, 0.0) + weight
            adapters, weights = list(by_name), list(by_name.values())
            self._evict(keep=set(adapters))  # never one this generation needs
            if adapters:
                self.pipe.enable_lora()
                self.pipe.set_adapters(adapters, weights)
            with loaded_embeddings(self.pipe, embeddings) as tokens:
                yield Applied(self.pipe, tokens)
        finally:
            if self._loaded:
                self.pipe.disable_lora()

    def _adapter(self, path: Path, shown: str) -> str:
        version = _FileVersion.of(path)
        name = version.adapter_name
        if name in self._loaded and name in self._present():
            self._loaded.move_to_end(name)
            return name
        self._loaded.pop(name, None)
        self._check(path, shown)
        try:
            with warnings.catch_warnings():
                # peft warns whenever a second adapter joins the first: that is the point here.
                warnings.filterwarnings("ignore", "Already found a `peft_config`", UserWarning)
                self.pipe.load_lora_weights(str(path), adapter_name=name)
        except Exception as error:  # diffusers and peft raise many types for a bad file
            log.warning("loading LoRA %s failed: %s", path, str(error)[:500])
            with contextlib.suppress(Exception):
                self.pipe.delete_adapters([name])
            raise EngineError(load_failure(shown, error)) from error
        self.loads += 1
        self._loaded[name] = version
        return name

    def _check(self, path: Path, shown: str) -> None:
        if self.family is None or path.suffix.lower() != SAFETENSORS:
            return
        try:
            check_family(read_header(path), self.family, self.model)
        except LoraFileError as problem:  # another family's, or not a safetensors file at all
            raise EngineError(problem.sentence(shown)) from None

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


def load_failure(name: str, error: Exception) -> str:
    """One sentence for the member on why diffusers would not load a LoRA file."""
    text = str(error)
    if "size mismatch" in text:
        # A layer of another width: an SDXL LoRA on an SD 1.x model, or the other way round.
        reason = "it was made for another kind of model (SD 1.x, SD 2.x and SDXL do not mix)"
    elif "not found in the base model" in text:
        reason = "none of its layers are in this model"
    else:
        reason = "its file is not a LoRA format this bot can read"
    return f"The LoRA {name} could not be loaded: {reason}."


def read_metadata(path: Path) -> dict[str, str]:
    """The header metadata of a LoRA or embedding file (ours under `sdbot.`)."""
    return read_header(path).metadata


# -- One generation's adapters ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActiveAdapters:
    """What the pipeline carries during one generation: how prompts must be written out for
    its embeddings, and the infotext keys that name its files."""

    applied: Applied
    infotext: dict[str, str]

    def expand(self, prompt: str) -> str:
        return self.applied.expand(prompt)


def adapter_infotext(
    params: GenerationParams, cache: FileHashCache | None = None
) -> dict[str, str]:
    """A1111's `Lora hashes` and `TI hashes` for a job's adapters (empty without any)."""
    extra = {}
    if params.loras:
        named = [(name, Path(path)) for name, path, _ in params.loras]
        extra["Lora hashes"] = lora_hashes(named, cache)
    if params.embeddings:
        tokens = [(token, Path(path)) for token, path in params.embeddings]
        extra["TI hashes"] = embedding_hashes(tokens, cache)
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
        cache = AdapterCache(loaded.pipe, family=loaded.family, model=loaded.spec.name)
        loaded.derived[ADAPTERS] = cache
    loras = [(Path(path), weight) for _, path, weight in params.loras]
    names = {Path(path): name for name, path, _ in reversed(params.loras)}  # the first's name
    embeddings = [(Path(path), token) for token, path in params.embeddings]
    with cache.applied(loras, embeddings, names) as applied:
        loaded.active = ActiveAdapters(applied, adapter_infotext(params, cache.hashes))
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

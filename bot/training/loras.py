"""The LoRAs and embeddings /dream and /loras use: each member's own, those shared in a
server, the owner's LoRA folder (bot/training/lora_folder.py), and the files a prompt's tags
and tokens name.

Private means private: a prompt is resolved against the files this member may use,
whatever brought it (typed, a reroll of someone else's result, /reproduce). A tag's name
is looked up in this order: the member's own LoRAs, then those shared in this server, then
the folder. A member's own names are theirs to choose, and a file the owner adds later does
not change what their prompts make.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import replace
from pathlib import Path

from bot.jobs.contracts import JobRefused
from bot.training.lora_folder import FolderLora, LoraFolder
from data.loras import DuplicateName, Lora, LoraRepository
from engine.api.lora_files import FAMILY_NAMES, LoraFileError, a1111_copy, check_family
from engine.api.lora_tags import merged_weights, parse_lora_tags
from engine.api.params import GenerationParams, InvalidParams
from engine.api.specs import ModelFamily, ModelSpec
from engine.api.training_params import sanitize_name

# Names listed in a refusal: Discord refuses messages past 2000 characters.
MAX_NAMES_SHOWN = 20
FOLDER_OWNER = 0  # the owner_id of the LoRA folder's files: no member's


class LoraLibrary:
    def __init__(
        self, models: dict[str, ModelSpec], loras: LoraRepository, folder: LoraFolder | None = None
    ) -> None:
        """`folder`: the owner's LoRA files (SDBOT_LORA_DIR), None without one."""
        self.models = models
        self.loras = loras
        self.folder = folder

    async def usable(self, user_id: int, guild_id: int | None) -> list[Lora]:
        """The member's own, those shared here, then the folder's usable files (owner 0)."""
        trained = await self.loras.usable(user_id, guild_id)
        return trained + [as_lora(entry) for entry in await self.folder_files() if entry.usable]

    async def folder_files(self) -> list[FolderLora]:
        """Every file in the LoRA folder, usable or not."""
        return await self.folder.entries() if self.folder is not None else []

    async def own(self, user_id: int, name: str) -> Lora:
        lora = await self.loras.owned(user_id, sanitize_name(name))
        if lora is None:
            raise JobRefused(f"You have no LoRA called {name}.")
        return lora

    async def rename(self, user_id: int, name: str, new_name: str) -> Lora:
        lora = await self.own(user_id, name)
        clean = sanitize_name(new_name)
        try:
            await self.loras.rename(lora.id, clean)
        except DuplicateName:
            raise JobRefused(f"You already have a LoRA called {clean}.") from None
        return replace(lora, name=clean)

    async def share(self, user_id: int, name: str, shared: bool, guild_id: int) -> Lora:
        """Shared within `guild_id` (the server it is shared from), or private again."""
        lora = await self.own(user_id, name)
        await self.loras.set_shared(lora.id, shared, guild_id)
        return replace(lora, shared=shared, guild_id=guild_id)

    async def delete(self, user_id: int, name: str) -> Lora:
        lora = await self.own(user_id, name)
        await self.loras.delete(lora.id)
        for path in (Path(lora.path), a1111_copy(Path(lora.path))):
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(path.unlink)
        return lora

    async def a1111_file(self, user_id: int, name: str) -> tuple[Lora, Path]:
        """One of the member's own, as the file A1111, Forge and ComfyUI load."""
        lora = await self.own(user_id, name)
        copy = a1111_copy(Path(lora.path))
        if not await asyncio.to_thread(copy.is_file):
            raise JobRefused(
                f"{lora.name} was trained before the bot kept a copy for A1111; "
                "train it again to get one."
            )
        return lora, copy

    async def resolve(
        self, params: GenerationParams, *, user_id: int, guild_id: int | None
    ) -> GenerationParams:
        """The files behind the prompt's <lora:name:w> tags and embedding tokens, among the
        member's own, those shared in this server and the folder's; InvalidParams for any
        other name, and for a file that cannot be used with this model.

        Each LoRA keeps the name its tag writes: A1111's `Lora hashes` name them so."""
        _, tags = parse_lora_tags(params.prompt)
        usable = await self.loras.usable(user_id, guild_id)
        spec = self.models[params.model]
        family = spec.guessed_family()
        loras = []
        for name, weight in merged_weights(tags):
            lora = _find(usable, name, "lora")
            if lora is not None:
                _check_family(lora, family, self.models)
                loras.append((name.strip(), lora.path, weight))
                continue
            # Only a configured family is certain (a name such as "pixel-art" guesses SDXL);
            # the engine checks the others against the model it loaded.
            path = await self._folder_file(name, spec.family, params.model, usable)
            loras.append((name.strip(), str(path), weight))
        texts = (params.prompt, params.negative, params.hires_prompt, params.hires_negative)
        words = set(re.findall(r"[\w-]+", " ".join(texts).lower()))
        # One file per token: the member's own comes first in `usable`, so a shared one of the
        # same token (two members who named theirs alike) never loads beside it.
        embeddings: dict[str, str] = {}
        for lora in usable:
            if lora.method == "embedding" and lora.token in words and lora.token not in embeddings:
                _check_family(lora, family, self.models)
                embeddings[lora.token] = lora.path
        return replace(params, loras=tuple(loras), embeddings=tuple(embeddings.items()))

    async def _folder_file(
        self, name: str, family: ModelFamily | None, model: str, usable: list[Lora]
    ) -> Path:
        entry = await self.folder.find(name) if self.folder is not None else None
        if entry is None:
            raise InvalidParams(await self._unknown(name, usable))
        problem = entry.problem
        if problem is None and entry.header is not None and family is not None:
            try:
                check_family(entry.header, family, model)
            except LoraFileError as mismatch:
                problem = mismatch
        if problem is not None:
            raise InvalidParams(problem.sentence(name.strip()))
        return entry.path

    async def _unknown(self, name: str, usable: list[Lora]) -> str:
        names = sorted({x.name for x in usable if x.method == "lora"})
        names += [entry.name for entry in await self.folder_files() if entry.usable]
        # Discord refuses messages past 2000 characters; a busy server shares many.
        shown = ", ".join(names[:MAX_NAMES_SHOWN]) or "none"
        if len(names) > MAX_NAMES_SHOWN:
            shown += ", …"
        where = "yours and those shared here"
        if self.folder is not None:
            where = "yours, those shared here and the bot's LoRA folder"
        return f"There is no LoRA called {name.strip()!r} that you may use ({where}: {shown})."


def as_lora(entry: FolderLora) -> Lora:
    """A folder file as the records /loras and the `lora` autocomplete list: owned by no
    member (0), shared everywhere, its family where a trained LoRA has its base model."""
    made_for = FAMILY_NAMES.get(entry.family or "", "family unknown")
    return Lora(
        id=0,
        owner_id=FOLDER_OWNER,
        guild_id=None,
        name=entry.name,
        method="lora",
        token="",
        class_word="LoRA folder",
        base_model=made_for,
        path=str(entry.path),
        shared=True,
        job_id=None,
        metadata={"source": "folder", "alias": entry.alias or ""},
        created_at=entry.mtime_ns / 1e9,
    )


def _find(usable: list[Lora], name: str, method: str) -> Lora | None:
    """The member's own first (the list is in that order), then one shared here."""
    wanted = name.strip().lower()
    return next((x for x in usable if x.name == wanted and x.method == method), None)


def _check_family(lora: Lora, family: str, models: dict[str, ModelSpec]) -> None:
    base = models.get(lora.base_model)
    if base is not None and base.guessed_family() != family:
        raise InvalidParams(
            f"{lora.name} was trained on {lora.base_model} ({base.guessed_family()}); "
            f"it cannot be used with a {family} model."
        )

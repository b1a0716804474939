"""What members trained, as /dream and /loras use it: each member's own LoRAs and
embeddings, those shared in a server, and the files a prompt's tags and tokens name.

Private means private: a prompt is resolved against the files this member may use,
whatever brought it (typed, a reroll of someone else's result, /reproduce).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import replace
from pathlib import Path

from bot.jobs.contracts import JobRefused
from data.loras import DuplicateName, Lora, LoraRepository
from engine.api.lora_tags import merged_weights, parse_lora_tags
from engine.api.params import GenerationParams, InvalidParams
from engine.api.specs import ModelSpec
from engine.api.training_params import sanitize_name

# Names listed in a refusal: Discord refuses messages past 2000 characters.
MAX_NAMES_SHOWN = 20


class LoraLibrary:
    def __init__(self, models: dict[str, ModelSpec], loras: LoraRepository) -> None:
        self.models = models
        self.loras = loras

    async def usable(self, user_id: int, guild_id: int | None) -> list[Lora]:
        return await self.loras.usable(user_id, guild_id)

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
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(Path(lora.path).unlink)
        return lora

    async def resolve(
        self, params: GenerationParams, *, user_id: int, guild_id: int | None
    ) -> GenerationParams:
        """The files behind the prompt's <lora:name:w> tags and embedding tokens, among the
        member's own and those shared in this server; InvalidParams for any other name."""
        _, tags = parse_lora_tags(params.prompt)
        usable = await self.loras.usable(user_id, guild_id)
        family = self.models[params.model].guessed_family()
        loras = []
        for name, weight in merged_weights(tags):
            lora = _find(usable, name, "lora")
            if lora is None:
                names = sorted({x.name for x in usable if x.method == "lora"})
                # Discord refuses messages past 2000 characters; a busy server shares many.
                mine = ", ".join(names[:MAX_NAMES_SHOWN]) or "none"
                if len(names) > MAX_NAMES_SHOWN:
                    mine += ", …"
                raise InvalidParams(
                    f"There is no LoRA called {name!r} that you may use "
                    f"(yours and those shared here: {mine})."
                )
            _check_family(lora, family, self.models)
            loras.append((lora.name, lora.path, weight))
        words = set(re.findall(r"[\w-]+", f"{params.prompt} {params.negative}".lower()))
        # One file per token: the member's own comes first in `usable`, so a shared one of the
        # same token (two members who named theirs alike) never loads beside it.
        embeddings: dict[str, str] = {}
        for lora in usable:
            if lora.method == "embedding" and lora.token in words and lora.token not in embeddings:
                _check_family(lora, family, self.models)
                embeddings[lora.token] = lora.path
        return replace(params, loras=tuple(loras), embeddings=tuple(embeddings.items()))


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

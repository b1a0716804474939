"""The generation parameters inside an image (A1111's infotext), read from an attachment and
shown as an embed: /png-info and /reproduce read them, a result's Info button shows them."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import discord

from cogs.ui.starting import download
from engine.api.infotext import parse_infotext
from engine.imaging.images import UnreadableImage, read_infotext

if TYPE_CHECKING:
    from bot.client.app import SDBot

FIELD_LIMIT = 1024
MAX_FIELDS = 24  # Discord allows 25 fields; one is the negative prompt
EMBED_LIMIT = 5900  # Discord's 6000 characters for all of an embed, with room for the footer


async def attachment_infotext(bot: SDBot, attachment: discord.Attachment) -> str:
    # Checked against the size Discord reports before a byte is downloaded.
    bot.images.check_size(attachment.size, "file")
    data = await download(attachment, "file")
    text = await asyncio.to_thread(read_infotext, data)
    if not text:
        raise UnreadableImage("That image carries no generation parameters.")
    return text


def _clip(text: str, limit: int = FIELD_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def infotext_embed(text: str) -> discord.Embed:
    info = parse_infotext(text)
    embed = discord.Embed(title="Parameters", description=_clip(info.prompt or "(no prompt)", 4000))
    if info.negative:
        embed.add_field(name="Negative", value=_clip(info.negative), inline=False)
    for key, value in list(info.values.items())[:MAX_FIELDS]:
        name, shown = _clip(key, 256), _clip(value or "—")
        if len(embed) + len(name) + len(shown) > EMBED_LIMIT:  # Discord refuses the whole embed
            embed.set_footer(text="More parameters did not fit.")
            break
        embed.add_field(name=name, value=shown)
    return embed

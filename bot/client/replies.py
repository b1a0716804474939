"""Answering a member safely: privately whatever state the interaction is in, and with
pings limited to exactly the member a message is for."""

from __future__ import annotations

import logging
from collections import OrderedDict

import discord

log = logging.getLogger(__name__)

# Discord's "Interaction has already been acknowledged": the same interaction delivered a
# second time (a gateway resume replays it) and answered by its first delivery.
ALREADY_ACKNOWLEDGED = 40060
# Said in a channel when a member could be told neither by the interaction nor by DM. It
# quotes nothing they typed: refusals often name their words, and the channel is public.
CHANNEL_FALLBACK = "I could not reach you by DM about your request; open your DMs to hear why."


def mention_only(user: discord.abc.Snowflake | int) -> discord.AllowedMentions:
    """Pings exactly this member: never @everyone, @here, a role or anyone else.

    Allowing `users=True` alone is not that: the other fields default to true, so a
    prompt quoting `@here` or a role would ping them.
    """
    target = discord.Object(id=user if isinstance(user, int) else user.id)
    return discord.AllowedMentions(everyone=False, roles=False, users=[target], replied_user=False)


def is_already_acknowledged(error: BaseException) -> bool:
    """Whether Discord refused an answer because this interaction was answered already."""
    return isinstance(error, discord.HTTPException) and error.code == ALREADY_ACKNOWLEDGED


async def reply_ephemeral(
    interaction: discord.Interaction,
    content: str,
    *,
    fallback_to_channel: bool = False,
    public: str = CHANNEL_FALLBACK,
) -> None:
    """Tell the member alone: as the response if none was sent, else as a followup.

    After a deferral Discord turns the first followup into the deferred ("thinking")
    response, keeping that response's visibility whatever the followup asks. So a deferred
    response is completed and deleted first; then the followup is a message of its own.
    The token lives 15 minutes: with `fallback_to_channel`, a member it can no longer reach
    is mentioned in the channel instead, with `public` (which must quote nothing they typed)
    rather than `content`.
    """
    response = interaction.response
    try:
        if not response.is_done():
            await response.send_message(content, ephemeral=True)
            return
        if response.type is discord.InteractionResponseType.deferred_channel_message:
            await _retract_original(interaction)
        await interaction.followup.send(content, ephemeral=True)
        return
    except discord.HTTPException as error:
        if is_already_acknowledged(error):  # a second delivery: the first one answers
            return
        log.info("could not reply to interaction %s privately (%s)", interaction.id, error)
    channel = interaction.channel
    if fallback_to_channel and isinstance(channel, discord.abc.Messageable):
        try:
            await channel.send(
                f"{interaction.user.mention} {public}",
                allowed_mentions=mention_only(interaction.user),
            )
            return
        except discord.HTTPException:
            pass
    log.warning("could not tell user %s: %s", interaction.user.id, content)


async def _retract_original(interaction: discord.Interaction) -> None:
    try:
        # Editing completes a response still "thinking", which can then be deleted.
        await interaction.edit_original_response(content="…", embed=None, attachments=[])
        await interaction.delete_original_response()
    except discord.HTTPException as error:
        log.info("could not remove the response to %s (%s)", interaction.id, error)


def first_delivery(interaction: discord.Interaction) -> bool:
    """False for an interaction Discord delivers a second time: the command tree, buttons
    and modals drop it unanswered (its first delivery answers it). See RecentInteractions."""
    check = getattr(interaction.client, "first_delivery", None)
    return check is None or bool(check(interaction))


class RecentInteractions:
    """The ids of the last interactions handled, to drop one Discord delivers again.

    A gateway resume can replay an INTERACTION_CREATE the bot already answered. The job
    it asked for is charged once (the interaction id is unique in the jobs table), but its
    handler would run again and every answer would fail with 40060. Bounded: a replay comes
    within seconds, and the tokens die after 15 minutes anyway.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[int, None] = OrderedDict()

    def first_delivery(self, interaction_id: int) -> bool:
        """True the first time an id is seen; False for a repeat (drop it)."""
        if interaction_id in self._seen:
            return False
        self._seen[interaction_id] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True

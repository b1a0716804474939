"""How a server's settings read in /settings answers: the whole policy, and each part."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bot.community.guilds import ChannelRule, GuildPolicy
from data.guilds import RoleLimits


def buttons_text(policy: GuildPolicy) -> str:
    who = (
        "anyone (each pays for their own clicks)" if policy.buttons_for_anyone else "the requester"
    )
    return f"Result buttons and reactions: {who} (admins always)."


def channels_text(policy: GuildPolicy) -> str:
    if policy.channels is ChannelRule.AGE_RESTRICTED:
        return "Channels: only those marked age-restricted."
    if policy.channels is ChannelRule.LISTED:
        listed = ", ".join(f"<#{c}>" for c in sorted(policy.listed_channels)) or "none yet"
        return f"Channels: only {listed}."
    return "Channels: every channel."


def pixels_text(pixels: int | None) -> str:
    if pixels is None:
        return "each model's own"
    side = math.isqrt(pixels)
    return f"{pixels:,} pixels ({side}x{side})"


def policy_text(policy: GuildPolicy, *, roles: Sequence[RoleLimits] = (), full: bool = True) -> str:
    words = ", ".join(rule.shown for rule in policy.words) if full else f"{len(policy.words)}"
    cooldowns = ", ".join(f"{k} {v:g}s" for k, v in sorted(policy.cooldowns.items()) if v > 0)
    lines = [
        buttons_text(policy),
        channels_text(policy),
        f"Models: {', '.join(policy.allowed_models) or 'all'}; default {policy.default_model}, "
        f"sampler {policy.default_sampler}.",
        f"Limits: {policy.max_steps} steps, {policy.max_count} images per job, size "
        f"{pixels_text(policy.max_pixels)}.",
        f"Flagged images outside age-restricted channels: {policy.safety.value}.",
        f"Price: {policy.price_per_image:g} credits per standard image (512x512, 20 steps).",
        f"Top-up: {policy.topup_amount} credits every {policy.topup_hours:g} h, up to "
        f"{policy.topup_ceiling}.",
        f"Banned words ({policy.words_action.value}): {words or 'none'}.",
        f"Cooldowns: {cooldowns or 'none'}.",
    ]
    for role in roles:
        lines.append(f"Role <@&{role.role_id}>: {role_limits_text(role)}.")
    return "\n".join(lines)


def role_limits_text(role: RoleLimits) -> str:
    parts = []
    if role.max_steps is not None:
        parts.append(f"{role.max_steps} steps")
    if role.max_pixels is not None:
        parts.append(f"size {pixels_text(role.max_pixels)}")
    if role.max_count is not None:
        parts.append(f"{role.max_count} images")
    if role.max_pending is not None:
        parts.append(f"{role.max_pending} pending jobs")
    if role.price_factor is not None:
        parts.append(f"price x{role.price_factor:g}")
    return ", ".join(parts) or "nothing changed"

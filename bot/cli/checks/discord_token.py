"""The Discord token's shape, never its value: a wrong paste is caught here, not as a
failed login after everything has loaded."""

from __future__ import annotations

import base64
import binascii

from pydantic import SecretStr

from bot.cli.checks.findings import Finding, failed, passed


def token_finding(token: SecretStr | None) -> Finding:
    """The token's shape, never its value: three dot-separated parts, the first the bot's
    user id in base64. Catches the client secret, quotes and `Bot ` pasted with it."""
    subject = "SDBOT_DISCORD_TOKEN"
    portal = "copy it again from the developer portal: your application, Bot, Reset Token"
    if token is None:
        return failed(subject, "not set", "copy .env.example to .env and put the bot's token there")
    value = token.get_secret_value()
    if value != value.strip() or value[:1] in "\"'":
        return failed(subject, "has spaces or quotes around it", "remove them")
    if value.lower().startswith("bot "):
        return failed(subject, 'starts with "Bot "', "put the token alone")
    parts = value.split(".")
    if len(parts) != 3 or not all(parts):
        return failed(
            subject,
            f"is not shaped like a bot token ({len(parts)} part(s); a token has 3, joined by "
            "dots: is it the client secret or the public key?)",
            portal,
        )
    try:
        bot_id = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        bot_id = ""
    if not bot_id.isdigit():
        return failed(subject, "its first part is not a bot's id", portal)
    return passed(subject, f"set, shaped like the token of bot {bot_id} (not shown)")

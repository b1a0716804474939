"""SDBOT_QUEUE_URL: whether the Redis the GPU workers meet in answers, and who is there.

Checked at start, before logging in to Discord: a bot whose Redis is unreachable would
accept jobs it cannot release. Uses redis-py's plain client with a short timeout and no
retries, so a wrong host or password is one line in a couple of seconds.
"""

from __future__ import annotations

from bot.cli.checks.findings import Finding, failed, passed
from bot.fleet import protocol
from bot.settings import Settings

SUBJECT = "SDBOT_QUEUE_URL"
TIMEOUT_SECONDS = 3.0


def queue_findings(settings: Settings, *, workers: bool = False) -> list[Finding]:
    """Nothing without the setting; else whether Redis answers (and, with `workers`, which
    GPU workers are there)."""
    if settings.queue_url is None:
        return []
    import redis
    from redis.exceptions import AuthenticationError, RedisError

    url = settings.queue_url.get_secret_value()
    shown = protocol.shown_url(url)
    client = redis.Redis.from_url(
        url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS, retry=None
    )
    try:
        client.ping()
        names = [key.decode() for key in client.scan_iter(match=protocol.WORKERS + "*")]
    except AuthenticationError:
        return [failed(SUBJECT, f"{shown} refused the password", "copy Redis's requirepass")]
    except (RedisError, OSError) as error:
        return [failed(SUBJECT, f"{shown} did not answer ({error})", "start Redis, or fix the URL")]
    finally:
        client.close()
    findings = [passed(SUBJECT, f"Redis at {shown} answers")]
    if workers:
        found = sorted(name.removeprefix(protocol.WORKERS) for name in names)
        if found:
            findings.append(passed("GPU workers", ", ".join(found)))
        else:
            findings.append(
                failed("GPU workers", "none running", "start one: python -m bot worker (README)")
            )
    return findings

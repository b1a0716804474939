"""What the Discord tests share: reading SimCord results and leaving jobs behind."""

from __future__ import annotations

from typing import Any

from tests.factories import tiny_params


def original_edits(env: Any, result: Any) -> list[dict[str, Any]]:
    """Every PATCH of an interaction's original response, in order (SimCord keeps only
    the last state of a message; the HTTP log keeps them all)."""
    interaction_id = str(result.response.message.interaction_metadata.id)
    return [
        r.json
        for r in env.http_requests
        if r.method == "PATCH"
        and r.path.endswith("/messages/@original")
        and interaction_id in r.path
    ]


def has_result(result: Any) -> bool:
    """The result (embed and images) has replaced the progress message."""
    return bool(result.response and result.response.embeds)


def ephemeral_followups(result: Any) -> list[str]:
    return [message.content for message in result.followups if message.ephemeral]


async def leave_job(sim: Any, member: Any, status: str, attempts: int, **params: Any) -> Any:
    """A job row as a crashed run would leave it, accepted and charged through the service."""
    chosen = tiny_params(prompt="left behind", seed=4, steps=1, **params)
    dreams = sim.bot.dreams
    job = await dreams.jobs.create(
        kind="dream",
        user_id=member.id,
        guild_id=sim.guild.id,
        channel_id=sim.channel.id,
        interaction_id=None,
        params=chosen.to_dict(),
        cost=dreams.price(chosen),
    )
    async with dreams.jobs._store.transaction() as db:
        await db.execute(
            "UPDATE jobs SET status = ?, attempts = ? WHERE id = ?", (status, attempts, job.id)
        )
    return job

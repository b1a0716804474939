"""The redis_server fixture itself: a real, private, loopback-only Redis that can die and
come back, and that has the stream commands the GPU workers use."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.conftest import DEADLINE
from tests.redis_server import RedisServer, require_redis_server

# redis-py retries a dropped connection, and a refused password (AuthenticationError is a
# ConnectionError), 10 times with backoff by default since 6.0; these tests want to see the
# first failure.
NO_RETRY = Retry(NoBackoff(), 0)


def client(server: RedisServer) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(server.url, retry=NO_RETRY, decode_responses=True)


def accepts(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(DEADLINE)
        try:
            sock.connect((host, port))
        except OSError:  # refused, or no such address here (IPv6 off)
            return False
        return True


async def test_answers_ping_with_the_password(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://:{redis_server.password}@127.0.0.1:{redis_server.port}/0"
    async with client(redis_server) as r:
        assert await r.ping() is True


async def test_refuses_without_the_password(redis_server: RedisServer) -> None:
    anonymous = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port, retry=NO_RETRY)
    async with anonymous:
        # RESP2 clients get NOAUTH; redis-py >= 6 opens with HELLO 3, refused as
        # "HELLO must be called with the client already authenticated".
        with pytest.raises((redis.AuthenticationError, redis.ResponseError), match=r"(?i)auth"):
            await anonymous.ping()
    wrong = redis.asyncio.Redis(
        host="127.0.0.1", port=redis_server.port, password="guess", retry=NO_RETRY
    )
    async with wrong:
        with pytest.raises(redis.AuthenticationError):
            await wrong.ping()


async def test_listens_on_loopback_only(redis_server: RedisServer) -> None:
    async with client(redis_server) as r:
        assert await r.config_get("bind") == {"bind": "127.0.0.1"}
    assert accepts("127.0.0.1", redis_server.port)
    # Still the loopback range, but not the address it is bound to: a wildcard bind would
    # accept these.
    assert not accepts("127.0.0.2", redis_server.port)
    assert not accepts("::1", redis_server.port)


async def test_kill_drops_clients_and_start_brings_it_back(redis_server: RedisServer) -> None:
    port = redis_server.port
    async with client(redis_server) as r:
        await r.set("before", "1")
        redis_server.kill()
        assert not redis_server.running
        with pytest.raises(redis.ConnectionError):
            await r.ping()

        redis_server.start()
        assert redis_server.port == port
        assert await r.ping() is True  # the same client reconnects on its next command
        assert await r.get("before") is None  # no persistence: Redis came back empty


async def test_appendonly_keeps_writes_across_a_kill(tmp_path: Path) -> None:
    executable = require_redis_server(DEADLINE)
    server = RedisServer(tmp_path, executable=executable, deadline=DEADLINE, appendonly=True)
    with server:
        async with client(server) as r:
            await r.xadd("jobs", {"job": "1"})
        server.kill()
        server.start()
        async with client(server) as r:
            assert [fields for _, fields in await r.xrange("jobs") or []] == [{"job": "1"}]


async def test_stream_round_trip_with_a_dead_consumer(redis_server: RedisServer) -> None:
    """XADD, XREADGROUP, XAUTOCLAIM (Redis >= 6.2) and XACK: a worker that died holding a
    job, and another that takes the job over and finishes it."""
    async with client(redis_server) as r:
        await r.xgroup_create("jobs", "workers", id="0", mkstream=True)
        job_id = await r.xadd("jobs", {"job": "42", "kind": "dream"})

        taken = await r.xreadgroup("workers", "gpu-a", {"jobs": ">"}, count=1)
        assert taken == [["jobs", [(job_id, {"job": "42", "kind": "dream"})]]]
        assert (await r.xpending("jobs", "workers"))["pending"] == 1

        # gpu-a dies without XACK; gpu-b claims what has been pending for >= 0 ms.
        _next, claimed, _deleted = await r.xautoclaim(
            "jobs", "workers", "gpu-b", min_idle_time=0, start_id="0-0"
        )
        assert claimed == [(job_id, {"job": "42", "kind": "dream"})]
        pending = await r.xpending_range("jobs", "workers", min="-", max="+", count=10)
        assert [(p["message_id"], p["consumer"]) for p in pending] == [(job_id, "gpu-b")]

        assert await r.xack("jobs", "workers", job_id) == 1
        assert (await r.xpending("jobs", "workers"))["pending"] == 0
        assert await r.xreadgroup("workers", "gpu-b", {"jobs": ">"}, count=1) == []


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_missing_server_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no redis-server
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="scripts/ensure-redis"):
        require_redis_server(DEADLINE)

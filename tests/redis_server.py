"""A real redis-server for the tests, our own process on a free loopback port.

The GPU workers rely on what only a real server does (consumer groups, XAUTOCLAIM, a
connection dropping when Redis dies), so the tests run the real program rather than a
fake. `scripts/ensure-redis` installs it; where it is missing the tests that need it skip,
except under CI=true, where they fail: CI must run them.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path
from typing import IO, Self

import pytest
import redis

MIN_MAJOR = 7
HOST = "127.0.0.1"
# `redis-server --version` answers at once; this only tells a hang.
VERSION_TIMEOUT = 60.0


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"true", "1", "yes"}


def redis_server_executable(timeout: float = VERSION_TIMEOUT) -> str | None:
    """The redis-server on PATH when it is version 7 or later, else None."""
    path = shutil.which("redis-server")
    if path is None:
        return None
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=timeout, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    # "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=..."
    match = re.search(r"\bv=(\d+)\.", out)
    if match is None or int(match.group(1)) < MIN_MAJOR:
        return None
    return path


def require_redis_server(timeout: float = VERSION_TIMEOUT) -> str:
    """The redis-server to run; without one the test skips, or fails under CI=true."""
    executable = redis_server_executable(timeout)
    if executable is not None:
        return executable
    reason = (
        f"no redis-server >= {MIN_MAJOR} on PATH: run scripts/ensure-redis as root "
        "(or sudo apt-get install redis-server)"
    )
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so Redis tests must run, not skip", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    # The port is free when we look; another process could take it before redis-server
    # binds it, and then start() reports redis-server's own error.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process: loopback only, a random password, no persistence unless
    `appendonly` (then every write is fsynced, so kill() and start() lose nothing).

    `port` and `directory` stay the same across stop()/kill() and start(), as a Redis
    that dies and comes back at the same address.
    """

    def __init__(
        self, directory: Path, *, executable: str, deadline: float, appendonly: bool = False
    ) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.directory = directory
        self.executable = executable
        self.deadline = deadline
        self.appendonly = appendonly
        self.port = free_port()
        self.password = secrets.token_hex(16)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{HOST}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis-server.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.executable,
            "--bind", HOST,
            "--port", str(self.port),
            "--requirepass", self.password,
            "--dir", str(self.directory),
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._wait_for_ping()

    def _wait_for_ping(self) -> None:
        # The only polling loop here: it waits on another process, which has no event to
        # await. The deadline only tells a hang from a slow machine.
        assert self._process is not None
        deadline = time.monotonic() + self.deadline
        client = redis.Redis(
            host=HOST, port=self.port, password=self.password, socket_timeout=self.deadline
        )
        try:
            while True:
                returncode = self._process.poll()
                if returncode is not None:
                    self._close_log()
                    raise RuntimeError(
                        f"redis-server exited with {returncode} before answering PING:\n"
                        + self.log_tail()
                    )
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"redis-server did not answer PING within {self.deadline}s:\n"
                        + self.log_tail()
                    )
                time.sleep(0.01)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM and wait, as an orderly shutdown; nothing if it is not running."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=self.deadline)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        self._close_log()

    def kill(self) -> None:
        """SIGKILL and wait, as Redis dying mid-run; nothing if it is not running."""
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()
        self._process = None
        self._close_log()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __del__(self) -> None:
        if self.running:
            warnings.warn(
                f"redis-server on port {self.port} left running", ResourceWarning, stacklevel=1
            )
            self.kill()

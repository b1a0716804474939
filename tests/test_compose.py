"""The Docker Compose example (README, "With Docker Compose") is read as Compose reads it:
no Docker engine runs here, so what can be checked without one is checked."""

from __future__ import annotations

import re
import shlex
import string
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.__main__ import parse_args
from bot.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "s3cretpass"


def compose() -> dict[str, Any]:
    """compose.yaml with ${VAR} and ${VAR:?message} filled in from a .env's REDIS_PASSWORD."""
    text = (ROOT / "compose.yaml").read_text()
    text = re.sub(r"\$\{REDIS_PASSWORD(:\?[^}]*)?\}", PASSWORD, text)
    assert "${" not in text, "a variable the README does not ask for"
    return yaml.safe_load(text)


def dockerfile() -> list[tuple[str, str]]:
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_the_bot_and_its_worker_share_one_image_and_one_redis_with_a_password():
    services = compose()["services"]
    assert set(services) == {"redis", "bot", "worker"}
    assert services["bot"]["image"] == services["worker"]["image"]
    assert services["bot"]["build"] == "."
    assert services["redis"]["command"][1:3] == ["--requirepass", PASSWORD]
    for name in ("bot", "worker"):
        url = services[name]["environment"]["SDBOT_QUEUE_URL"]
        assert url == f"redis://:{PASSWORD}@redis:6379/0"
        # The bot's own start check: another host without a password would be refused.
        settings = Settings(_env_file=None, queue_url=url)
        assert settings.queue_url is not None


def test_each_service_runs_a_command_the_bot_has():
    services = compose()["services"]
    entry = dict(dockerfile())["ENTRYPOINT"]
    assert yaml.safe_load(entry) == ["python", "-m", "bot"]
    for name in ("bot", "worker"):
        command = services[name].get("command", [])
        arguments = shlex.split(command) if isinstance(command, str) else command
        parsed = parse_args(arguments)
        assert parsed.command in (None, "worker")
    assert (
        "gpu"
        in services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"]
    )


def test_the_image_installs_what_the_makefile_does():
    steps = dockerfile()
    makefile = (ROOT / "Makefile").read_text()
    [torch_pin] = re.findall(r"^TORCH \?= (.+)$", makefile, flags=re.MULTILINE)
    assert ("ARG", f'TORCH="{torch_pin}"') in steps
    copied = {value.split()[0] for key, value in steps if key == "COPY"}
    pyproject = (ROOT / "pyproject.toml").read_text()
    [include] = re.findall(r"^include = \[(.+)\]$", pyproject, flags=re.MULTILINE)
    packages = {name.strip(' "*') for name in include.split(",")}
    assert packages <= copied, "every package pyproject.toml installs is in the image"
    assert ("RUN", "pip install --no-cache-dir .") in steps


@pytest.mark.parametrize("name", ["bot", "worker"])
def test_no_service_writes_its_data_outside_a_volume(name):
    service = compose()["services"][name]
    targets = {mount.split(":")[1] for mount in service["volumes"]}
    environment = dict(kv.split("=", 1) for kv in _env_lines())
    assert environment["HF_HOME"].startswith("/cache")
    assert "/cache" in targets
    if name == "bot":
        assert service["environment"]["SDBOT_DATA_DIR"] in targets


def _env_lines() -> list[str]:
    [(_, value)] = [(k, v) for k, v in dockerfile() if k == "ENV"]
    return [part for part in value.split() if "=" in part and part[0] in string.ascii_letters]

"""Settings: read from the environment and `.env`, documented in `.env.example`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent


def example_keys() -> dict[str, str]:
    """KEY=value lines of .env.example (commented examples excluded)."""
    keys = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^([A-Z0-9_]+)=(.*)$", line)
        if match:
            keys[match.group(1)] = match.group(2)
    return keys


def test_env_example_documents_every_setting_and_nothing_else():
    expected = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert set(example_keys()) == expected


def test_env_example_loads_as_valid_settings(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text((ROOT / ".env.example").read_text())
    for key in example_keys():
        monkeypatch.delenv(key, raising=False)
    settings = Settings(_env_file=env_file)
    defaults = Settings(_env_file=None)
    assert settings.models.keys() == defaults.models.keys()
    assert settings.discord_token is None
    assert settings.dev_guild_id is None
    assert settings.db_path == Path("var/bot.sqlite3")


def test_environment_overrides_and_models_json(monkeypatch):
    monkeypatch.setenv("SDBOT_MODELS", '{"a": {"source": "/m/a.safetensors", "family": "sdxl"}}')
    monkeypatch.setenv("SDBOT_DEFAULT_MODEL", "a")
    monkeypatch.setenv("SDBOT_DISCORD_TOKEN", "secret-token")
    settings = Settings(_env_file=None)
    [spec] = settings.model_specs().values()
    assert spec.is_single_file
    assert spec.size_default() == (1024, 1024)
    assert "secret-token" not in repr(settings)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"SDBOT_DEFAULT_MODEL": "missing"}, "default_model 'missing' is not one of"),
        ({"SDBOT_MODELS": "{}"}, "configure at least one model"),
        ({"SDBOT_DEVICE": "tpu"}, "String should match pattern"),
    ],
)
def test_bad_settings_are_refused_with_a_reason(monkeypatch, variables, message):
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None)

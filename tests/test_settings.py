"""Settings: read from the environment and `.env`, documented in `.env.example`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from bot.settings import ENV_PREFIX, Settings, explain_settings_error

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
        ({"SDBOT_DEFAULT_MODEL": "missing"}, "'missing' is not a model in SDBOT_MODELS"),
        ({"SDBOT_MODELS": "{}"}, "configure at least one model"),
        ({"SDBOT_DEVICE": "tpu"}, "String should match pattern"),
    ],
)
def test_bad_settings_are_refused_with_a_reason(monkeypatch, variables, message):
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None)


def lines_for(**variables: str) -> list[str]:
    """What `python -m bot` prints for these variables: one line per bad setting."""
    try:
        Settings(_env_file=None)
    except (ValidationError, SettingsError) as error:
        return explain_settings_error(error)
    raise AssertionError("the settings were accepted")


MODELS_EXAMPLE = '{"sd15": {"source": "stable-diffusion-v1-5/stable-diffusion-v1-5"}}'
JSON_FIX = "write it as JSON, with double quotes and no trailing comma"


@pytest.mark.parametrize(
    ("variables", "line"),
    [
        (
            {"SDBOT_MODELS": '{"a": {"source": "x"},}'},
            "Setting SDBOT_MODELS is not valid JSON (Expecting property name enclosed in double "
            f"quotes at character 23): {JSON_FIX}, e.g. SDBOT_MODELS={MODELS_EXAMPLE} "
            "(see .env.example)",
        ),
        (
            {"SDBOT_MODELS": "{'a': {'source': 'x'}}"},
            "Setting SDBOT_MODELS is not valid JSON (Expecting property name enclosed in double "
            f"quotes at character 2): {JSON_FIX}, e.g. SDBOT_MODELS={MODELS_EXAMPLE} "
            "(see .env.example)",
        ),
        (
            {"SDBOT_OWNER_IDS": "123,456"},
            f"Setting SDBOT_OWNER_IDS is not valid JSON (Extra data at character 4): {JSON_FIX}, "
            "e.g. SDBOT_OWNER_IDS=[123456789012345678, 234567890123456789] (see .env.example)",
        ),
        (
            {"SDBOT_DEFAULT_MODEL": "mine"},
            "Setting SDBOT_DEFAULT_MODEL: 'mine' is not a model in SDBOT_MODELS (sd15): set "
            "SDBOT_DEFAULT_MODEL to one of them, or add it to SDBOT_MODELS (see .env.example)",
        ),
        (
            # The first run of an owner whose only model is not called sd15.
            {"SDBOT_MODELS": '{"mine": {"source": "/models/mine.safetensors"}}'},
            "Setting SDBOT_DEFAULT_MODEL: 'sd15' is not a model in SDBOT_MODELS (mine): set "
            "SDBOT_DEFAULT_MODEL to one of them, or add it to SDBOT_MODELS (see .env.example)",
        ),
        (
            {"SDBOT_MODELS": '{"mine": {"source": 3}}', "SDBOT_DEFAULT_MODEL": "mine"},
            "Setting SDBOT_MODELS (mine.source): Input should be a valid string (see .env.example)",
        ),
        (
            {"SDBOT_LOG_LEVEL": "loud"},
            "Setting SDBOT_LOG_LEVEL: 'loud' is not a log level: use one of DEBUG, INFO, "
            "WARNING, ERROR, CRITICAL (see .env.example)",
        ),
    ],
)
def test_each_bad_setting_is_one_line_naming_it_and_the_fix(monkeypatch, variables, line):
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    assert lines_for() == [line]


def test_malformed_json_in_env_file_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("SDBOT_OWNER_IDS=[123,]\n")
    with pytest.raises(SettingsError) as caught:
        Settings()
    [line] = explain_settings_error(caught.value)
    assert line.startswith("Setting SDBOT_OWNER_IDS in .env is not valid JSON (Expecting value")

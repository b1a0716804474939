"""An owner's first hour (issue 19): every set-up mistake, made as an owner makes it, is one
line naming the setting and the fix, exit status 2, and writes nothing.

`python -m bot` is run in-process through its entry function, in a fresh folder with no
SDBOT_ variables but the test's: the same settings, checks and prints as the console, without
paying for a new interpreter each time. One test runs a real process, to see that argument
errors never import torch.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import discord
import pytest
import torch
from safetensors.torch import save_file

from bot.__main__ import main
from engine.api.errors import ModelLoadError
from engine.api.infotext import params_from_infotext
from engine.api.specs import ModelSpec
from engine.imaging.images import read_png_infotext
from engine.pipelines.loading import load_model
from tests.conftest import DEADLINE

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
NO_CUDA = (
    f"SDBOT_DEVICE=cuda: torch {torch.__version__} is a CPU-only build: set SDBOT_DEVICE=auto "
    "(or cpu), or install a CUDA build of torch (README, GPUs and torch)"
)
SD1_CONFIG = "stable-diffusion-v1-5/stable-diffusion-v1-5"

Console = Callable[..., tuple[int, list[str], list[str]]]


@pytest.fixture
def owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder, as after a clone: no .env, no SDBOT_ variables, nothing written yet."""
    for key in list(os.environ):
        if key.startswith("SDBOT_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def console(
    owner: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Console:
    """`python -m bot ARGS` with the given SDBOT_ settings: (exit status, stdout, stderr)."""

    def run(*argv: str, **env: str) -> tuple[int, list[str], list[str]]:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out.splitlines(), err.splitlines()

    return run


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without CUDA, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)


@pytest.fixture
def no_discord(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records a login to Discord instead of making one."""
    logins: list[str] = []

    def run_bot(settings: object) -> int:
        logins.append("login")
        return 0

    monkeypatch.setattr("bot.client.runner.run_bot", run_bot)
    return logins


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory, tiny_sd1: Path) -> Path:
    """The tiny SD1 model as A1111 users keep theirs: one .safetensors file."""
    from diffusers import StableDiffusionPipeline

    from tests.ldm_layout import pipeline_to_ldm

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd1))
    path = tmp_path_factory.mktemp("checkpoints") / "tiny-file.safetensors"
    save_file(pipeline_to_ldm(pipe), str(path))
    return path


def written(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*"))


# -- settings ----------------------------------------------------------------------------


def test_malformed_json_is_one_line_and_exit_2_then_a_traceback_at_debug(owner, console):
    code, out, err = console("credits", "show", "1", SDBOT_OWNER_IDS="123,456")
    assert (code, out) == (2, [])
    assert err == [
        "Setting SDBOT_OWNER_IDS is not valid JSON (Extra data at character 4): write it as "
        "JSON, with double quotes and no trailing comma, e.g. SDBOT_OWNER_IDS=[123456789012345678,"
        " 234567890123456789] (see .env.example)"
    ]
    assert written(owner) == []
    code, _, err = console("credits", "show", "1", SDBOT_LOG_LEVEL="DEBUG")
    assert code == 2
    assert err[0].startswith("Setting SDBOT_OWNER_IDS is not valid JSON")
    assert "Traceback (most recent call last):" in err


def test_a_queue_url_without_a_password_is_one_line_naming_the_setting(owner, console):
    code, out, err = console("worker", SDBOT_QUEUE_URL="redis://gpu-box:6379/0")
    assert (code, out) == (2, [])
    assert len(err) == 1
    assert err[0].startswith("Setting SDBOT_QUEUE_URL: ")
    assert "reaches gpu-box without a password" in err[0]
    assert written(owner) == []


def test_default_model_not_configured_names_the_setting(owner, console):
    code, _, err = console(
        "dream", "a cat", SDBOT_MODELS='{"mine": {"source": "/models/mine.safetensors"}}'
    )
    assert code == 2
    assert err == [
        "Setting SDBOT_DEFAULT_MODEL: 'sd15' is not a model in SDBOT_MODELS (mine): set "
        "SDBOT_DEFAULT_MODEL to one of them, or add it to SDBOT_MODELS (see .env.example)"
    ]


# -- checks at start, before Discord -----------------------------------------------------


def test_cuda_on_a_machine_without_it_is_refused_before_logging_in(
    owner, console, no_cuda, no_discord, tiny_sd1
):
    models = f'{{"tiny": {{"source": "{tiny_sd1}"}}}}'
    env = {"SDBOT_DISCORD_TOKEN": "x", "SDBOT_MODELS": models, "SDBOT_DEFAULT_MODEL": "tiny"}
    code, out, err = console(SDBOT_DEVICE="cuda", **env)
    assert (code, out, err) == (2, [], [NO_CUDA])
    assert no_discord == []
    assert written(owner) == []
    code, _, err = console("selftest")
    assert (code, err) == (2, [f"error: {NO_CUDA}"])
    assert console("run", SDBOT_DEVICE="cpu")[0] == 0
    assert no_discord == ["login"]


def test_every_start_problem_is_a_line_of_its_own(owner, console, no_discord, tiny_file):
    (owner / "notes.txt").write_text("not a folder")
    models = (
        '{"a": {"source": "/models/a.safetensors"}, "b": {"source": "org/not-cached"}, '
        f'"c": {{"source": "{tiny_file}"}}}}'
    )
    code, out, err = console(
        SDBOT_DISCORD_TOKEN="x",
        SDBOT_DEVICE="cpu",
        SDBOT_DATA_DIR="notes.txt/var",
        SDBOT_MODELS=models,
        SDBOT_DEFAULT_MODEL="a",
    )
    assert (code, out) == (2, [])
    assert err == [
        "SDBOT_DATA_DIR: notes.txt is a file, so notes.txt/var cannot be a folder: set "
        "SDBOT_DATA_DIR to a folder that can be written",
        'SDBOT_MODELS (a): there is no file or folder /models/a.safetensors: fix its "source" '
        "(a Hub id, a diffusers folder or a .safetensors/.ckpt file)",
        "SDBOT_MODELS (b): org/not-cached is not in the Hugging Face cache and HF_HUB_OFFLINE "
        "is set: download it once with the network (hf download org/not-cached), or point its "
        '"source" at a local diffusers folder',
        f"SDBOT_MODELS (c.config): not set, and a single sd1 file loads with {SD1_CONFIG}'s "
        "configuration, which is not in the Hugging Face cache while HF_HUB_OFFLINE is set: "
        'set "config" of model c in SDBOT_MODELS to a local diffusers folder of the same family',
    ]
    assert no_discord == []
    assert written(owner) == [owner / "notes.txt"]


def test_a_token_discord_refuses_is_one_line_and_exit_2(owner, make_settings, monkeypatch, capsys):
    from bot.client.runner import run_bot

    async def refuse(self: object, token: str) -> None:
        raise discord.LoginFailure("Improper token has been passed.")

    monkeypatch.setattr(discord.http.HTTPClient, "static_login", refuse)
    assert run_bot(make_settings()) == 2
    assert capsys.readouterr().err.splitlines() == [
        "SDBOT_DISCORD_TOKEN was refused by Discord: copy it again from the developer portal "
        "(your application, Bot, Reset Token)"
    ]


# -- the console's dream -----------------------------------------------------------------


def test_dream_checks_the_output_folder_before_generating(owner, console, tiny_sd1):
    (owner / "notes.txt").write_text("not a folder")
    code, out, err = console(
        "dream", "a cat", "--model", str(tiny_sd1), "--steps", "2", SDBOT_DATA_DIR="notes.txt"
    )
    assert (code, out) == (2, [])
    assert err == [
        "error: SDBOT_DATA_DIR: notes.txt is a file, so notes.txt/out cannot be a folder: set "
        "SDBOT_DATA_DIR to a folder that can be written"
    ]
    code, _, err = console("dream", "a cat", "--model", str(tiny_sd1), "--out", "notes.txt/x")
    assert code == 2
    assert err == [
        "error: --out: notes.txt is a file, so notes.txt/x cannot be a folder: set --out to a "
        "folder that can be written"
    ]
    assert written(owner) == [owner / "notes.txt"]


def test_dream_of_a_path_that_does_not_exist(owner, console):
    code, _, err = console("dream", "a cat", "--model", "models/typo.safetensors")
    assert code == 2
    assert err == [
        f"error: --model models/typo.safetensors: there is no file or folder "
        f"{owner / 'models/typo.safetensors'} (--model takes a configured name, a diffusers "
        "folder or a .safetensors/.ckpt file)"
    ]
    assert written(owner) == []


def test_dream_of_a_single_file_offline_needs_config_and_names_the_checkpoint(
    owner, console, tiny_file, tiny_sd1
):
    args = ("dream", "a cat", "--model", str(tiny_file), "--steps", "2", "--size", "64x64")
    code, out, err = console(*args)
    assert (code, out) == (2, [])
    assert err == [
        f"error: --config: not set, and a single sd1 file loads with {SD1_CONFIG}'s "
        "configuration, which is not in the Hugging Face cache while HF_HUB_OFFLINE is set: "
        "pass --config with a local diffusers folder of the same family"
    ]
    assert written(owner) == []
    code, out, err = console(*args, "--seed", "5", "--config", str(tiny_sd1), "--out", "pics")
    assert code == 0, err
    [line] = out
    png = Path(line.split("\t")[0])
    assert png.parent == Path("pics")
    # A1111 writes the checkpoint's name, never where the owner keeps it.
    params = params_from_infotext(read_png_infotext(png.read_bytes()))
    assert (params.model, params.seed) == ("tiny-file", 5)
    assert str(tiny_file.parent) not in read_png_infotext(png.read_bytes())


def test_dream_config_is_for_single_files(owner, console, tiny_sd1):
    code, _, err = console("dream", "a cat", "--model", str(tiny_sd1), "--config", str(tiny_sd1))
    assert code == 2
    assert err == [
        f"error: --config is for a .safetensors/.ckpt file, and model tiny-sd1 is {tiny_sd1}"
    ]


def test_dream_of_a_checkpoint_that_fails_to_load_writes_nothing(owner, console, tiny_sd1):
    broken = owner / "broken.safetensors"
    save_file({"cond_stage_model.transformer.x": torch.zeros(1)}, str(broken))
    code, out, err = console(
        "dream", "a cat", "--model", str(broken), "--config", str(tiny_sd1), "--out", "pics"
    )
    assert (code, out) == (2, [])
    [line] = err
    assert line.startswith("error: Model broken could not be loaded: ")
    assert written(owner) == [broken]


def test_argument_errors_never_wait_for_torch(tmp_path):
    """Run in a real process: this one has imported torch long ago."""
    script = (
        "import sys\n"
        "from bot.__main__ import main\n"
        "codes = [\n"
        "    main(['dream', 'a cat', '--size', '65x64']),\n"
        "    main(['dream', 'a cat', '--model', 'not-a-model']),\n"
        "    main(['dream', 'a cat', '--model', 'models/typo.safetensors']),\n"
        "    main(['credits', 'grant', '1', '0']),\n"
        "]\n"
        "heavy = sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules))\n"
        "print(codes, heavy)\n"
    )
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SDBOT_")}
    environment.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.stdout.strip() == "[2, 2, 2, 2] []", done.stderr
    assert done.stderr.splitlines() == [
        "error: Size 65x64: width and height must be multiples of 8.",
        "error: Unknown model 'not-a-model'. Models: sd15.",
        f"error: --model models/typo.safetensors: there is no file or folder "
        f"{tmp_path.resolve() / 'models/typo.safetensors'} (--model takes a configured name, a "
        "diffusers folder or a .safetensors/.ckpt file)",
        "error: grant a positive number of credits; to lower a balance: python -m bot credits "
        "set 1 AMOUNT",
    ]
    assert list(tmp_path.iterdir()) == []


# -- model loading, as the bot's log tells it --------------------------------------------


@pytest.mark.parametrize(
    ("source", "owner_line"),
    [
        (
            "org/not-cached",
            "org/not-cached is not in the Hugging Face cache and the Hub is switched off here "
            "(HF_HUB_OFFLINE is set): download it once with the network (hf download "
            'org/not-cached), or set "source" of model m in SDBOT_MODELS to a local diffusers '
            "folder",
        ),
        (
            "{file}",
            "diffusers reads a single file's configuration from the Hub, and the Hub is "
            'switched off here (HF_HUB_OFFLINE is set): set "config" of model m in SDBOT_MODELS '
            "(--config on the console) to a local diffusers folder of the same family",
        ),
        (
            "{missing}",
            'there is no file or folder {missing}: fix "source" of model m in SDBOT_MODELS',
        ),
    ],
)
def test_a_model_that_cannot_load_is_one_line_in_the_log_with_the_fix(
    tmp_path, tiny_file, caplog, source, owner_line
):
    places = {"file": tiny_file, "missing": tmp_path / "models" / "gone"}
    source = source.format(**places)
    owner_line = owner_line.format(**places)
    caplog.set_level(logging.INFO)
    with pytest.raises(ModelLoadError) as caught:
        load_model(ModelSpec("m", source), CPU, torch.float32)
    # Members keep their wording; the owner's console and log get the cause and the fix.
    assert caught.value.user_message == "Model m could not be loaded: the bot's log has the details"
    assert caught.value.detail == f"Model m could not be loaded: {owner_line}"
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [record.getMessage() for record in errors] == [caught.value.detail]
    assert all(record.exc_info is None for record in errors)


def test_a_model_on_a_device_torch_lacks_says_which_setting(tiny_sd1, no_cuda):
    with pytest.raises(ModelLoadError) as caught:
        load_model(ModelSpec("m", str(tiny_sd1)), torch.device("cuda"), torch.float32)
    assert caught.value.detail == (
        f"Model m could not be loaded: SDBOT_DEVICE is cuda but torch {torch.__version__} sees "
        "no CUDA GPU: set SDBOT_DEVICE=auto (or cpu), or install a CUDA build of torch"
    )


# -- credits on the console --------------------------------------------------------------


def test_credits_show_writes_nothing(owner, console):
    code, _, err = console("credits", "show", "42")
    assert code == 2
    assert err == [
        "error: there is no database at var/bot.sqlite3: run this where the bot runs, or set "
        "SDBOT_DATA_DIR to where its database is"
    ]
    assert written(owner) == []
    assert console("credits", "grant", "7", "5")[:2] == (0, ["user 7: balance 55"])
    before = dump(owner / "var" / "bot.sqlite3")
    assert console("credits", "show", "42")[:2] == (
        0,
        ["user 42: no account yet (their first command opens one)"],
    )
    assert dump(owner / "var" / "bot.sqlite3") == before


def test_credits_set_and_a_negative_grant(owner, console):
    code, out, err = console("credits", "grant", "42", "-5")
    assert (code, out) == (2, [])
    assert err == [
        "error: grant a positive number of credits; to lower a balance: python -m bot credits "
        "set 42 AMOUNT"
    ]
    assert written(owner) == []
    assert console("credits", "set", "42", "10")[:2] == (0, ["user 42: balance 10"])
    code, out, _ = console("credits", "show", "42")
    assert out[0] == "user 42: balance 10"
    assert out[1].endswith("-40 adjust (set from the console)")
    assert out[2].endswith("+50 grant (welcome)")
    assert console("credits", "set", "42", "-1")[2] == ["error: a balance cannot be negative"]
    assert console("db", "check")[:2] == (0, ["OK"])


def dump(database: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(database) as db:
        return db.execute(
            "SELECT 'account', user_id, balance, topped_up_at FROM accounts UNION ALL"
            " SELECT 'ledger', id, delta, kind FROM ledger ORDER BY 1, 2"
        ).fetchall()


def test_a_grant_into_a_data_folder_that_cannot_be_made(owner, console):
    (owner / "notes.txt").write_text("not a folder")
    code, out, err = console("credits", "grant", "42", "5", SDBOT_DATA_DIR="notes.txt/var")
    assert (code, out) == (2, [])
    assert err == [
        "error: SDBOT_DATA_DIR: notes.txt is a file, so notes.txt/var cannot be a folder: set "
        "SDBOT_DATA_DIR to a folder that can be written"
    ]
    assert written(owner) == [owner / "notes.txt"]

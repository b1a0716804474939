"""The console commands, run as a newcomer runs them: `python -m bot ...` in a fresh process."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.api.infotext import params_from_infotext
from engine.imaging.images import read_png_infotext

ROOT = Path(__file__).resolve().parent.parent


def run_bot(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SDBOT_")}
    environment.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **env})
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_no_token_exits_2_naming_the_setting(tmp_path):
    done = run_bot(cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "SDBOT_DISCORD_TOKEN is not set: copy .env.example to .env and put the bot's token there."
    ]


def test_bad_setting_exits_2_naming_it(tmp_path):
    done = run_bot(cwd=tmp_path, SDBOT_DEVICE="tpu")
    assert done.returncode == 2
    assert done.stderr.startswith("Setting SDBOT_DEVICE: String should match pattern")


def test_selftest_prints_ok(tmp_path):
    done = run_bot("selftest", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK build ")
    assert "generate" in done.stdout


def test_dream_writes_pngs_whose_infotext_matches(tmp_path, tiny_sd1):
    out = tmp_path / "out"
    args = (
        "dream",
        "a red fox, (snow:1.1)",
        "--negative",
        "blurry",
        "--model",
        str(tiny_sd1),
        "--seed",
        "77",
        "--steps",
        "3",
        "--cfg",
        "6",
        "--size",
        "80x64",
        "--sampler",
        "DPM++ 2M Karras",
        "--count",
        "2",
        "--out",
        str(out),
    )
    runs = [run_bot(*args, cwd=tmp_path) for _ in range(2)]
    images = []
    for done in runs:
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        assert [line.split("\tseed=")[1] for line in lines] == ["77", "78"]
        images.append([Path(line.split("\t")[0]).read_bytes() for line in lines])
    for index, png in enumerate(images[0]):
        params = params_from_infotext(read_png_infotext(png), count=2)
        assert params.prompt == "a red fox, (snow:1.1)"
        assert params.negative == "blurry"
        assert (params.seed, params.steps, params.cfg) == (77 + index, 3, 6.0)
        assert (params.width, params.height) == (80, 64)
        # A1111's old combined name, written back as A1111 1.9+ does: the pair.
        assert (params.sampler, params.schedule) == ("DPM++ 2M", "Karras")
        assert params.model == "tiny-sd1"  # the folder's name, as A1111 writes it: no path
    first = [np.asarray(Image.open(io.BytesIO(png))) for png in images[0]]
    second = [np.asarray(Image.open(io.BytesIO(png))) for png in images[1]]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_dream_refuses_bad_input_with_exit_2(tmp_path, tiny_sd1):
    done = run_bot("dream", "a cat", "--model", str(tiny_sd1), "--size", "65x64", cwd=tmp_path)
    assert done.returncode == 2
    assert "multiples of 8" in done.stderr
    done = run_bot("dream", "a cat", "--model", "not-a-model", cwd=tmp_path)
    assert done.returncode == 2
    assert "Unknown model 'not-a-model'" in done.stderr


def test_console_credits_and_db_check(tmp_path):
    env = {"SDBOT_DATA_DIR": str(tmp_path / "var")}
    granted = run_bot("credits", "grant", "1234", "25", "--reason", "prize", cwd=tmp_path, **env)
    assert granted.returncode == 0, granted.stderr
    assert granted.stdout.strip() == "user 1234: balance 75"
    shown = run_bot("credits", "show", "1234", cwd=tmp_path, **env)
    lines = shown.stdout.strip().splitlines()
    assert lines[0] == "user 1234: balance 75"
    assert lines[1].endswith("+25 adjust (prize)")
    assert lines[2].endswith("+50 grant (welcome)")
    refused = run_bot("credits", "grant", "1234", "0", cwd=tmp_path, **env)
    assert refused.returncode == 2
    assert "positive" in refused.stderr
    assert run_bot("db", "check", cwd=tmp_path, **env).stdout.strip() == "OK"

    import sqlite3

    with sqlite3.connect(tmp_path / "var" / "bot.sqlite3") as db:
        db.execute("UPDATE accounts SET balance = 5")
    broken = run_bot("db", "check", cwd=tmp_path, **env)
    assert broken.returncode == 1
    assert broken.stdout.strip() == "user 1234: balance 5 but the ledger sums to 75"


# -- SD 3 and FLUX.1 --------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_selftest_of_each_new_family(tmp_path, family):
    done = run_bot("selftest", "--family", family, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK build ")
    assert f"({family}, 64x64, 4 steps" in done.stdout


def test_selftest_refuses_an_unknown_family_before_loading_anything(tmp_path):
    done = run_bot("selftest", "--family", "sd4", cwd=tmp_path)
    assert done.returncode == 2
    assert "invalid choice: 'sd4'" in done.stderr


@pytest.fixture(scope="module")
def tiny_flow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from engine.pipelines.tiny_families import save_tiny_family

    root = tmp_path_factory.mktemp("flow-models")
    return {family: save_tiny_family(root / f"tiny-{family}", family) for family in ("sd3", "flux")}


@pytest.mark.parametrize(
    ("family", "options", "written"),
    [
        ("flux", ["--cfg", "3"], "CFG scale: 1, Distilled CFG Scale: 3, Seed: 9"),
        ("sd3", ["--cfg", "4.5", "--negative", "blurry"], "CFG scale: 4.5, Seed: 9"),
    ],
)
def test_dream_on_a_new_family_writes_pngs_a1111_and_forge_read(
    tmp_path, tiny_flow, family, options, written
):
    out = tmp_path / "out"
    model = str(tiny_flow[family])
    args = ("dream", "a red (cube:1.2)", "--model", model, "--seed", "9", "--steps", "2")
    done = run_bot(*args, "--size", "64x64", *options, "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.strip().splitlines()
    infotext = read_png_infotext(Path(line.split("\t")[0]).read_bytes())
    assert infotext is not None
    assert written in infotext
    assert "Sampler: Euler, Schedule type: Automatic" in infotext
    params = params_from_infotext(infotext)
    assert (params.prompt, params.seed, params.steps, params.model) == (
        "a red (cube:1.2)",
        9,
        2,
        f"tiny-{family}",
    )


def test_dream_refuses_what_flux_cannot_do_with_exit_2(tmp_path, tiny_flow):
    model = str(tiny_flow["flux"])
    done = run_bot("dream", "a cat", "--model", model, "--negative", "blurry", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: FLUX.1 dev has no negative prompt (its guidance is distilled into the model, so "
        "nothing runs against one): leave it empty and say in the prompt what you want."
    )
    done = run_bot("dream", "a cat", "--model", model, "--size", "72x64", cwd=tmp_path)
    assert done.returncode == 2
    assert "multiples of 16 for FLUX.1 dev models" in done.stderr


def test_selftest_saves_the_tiny_model_for_dream_and_refuses_a_used_folder(tmp_path):
    done = run_bot("selftest", "--save", "tiny-model", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tiny-model" / "model_index.json").is_file()
    assert done.stdout.strip().endswith("--model tiny-model on dream")
    again = run_bot("selftest", "--save", "tiny-model", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip() == "error: --save tiny-model: choose a new or empty folder"

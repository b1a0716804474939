"""`python -m bot selftest` with SDBOT_QUEUE_URL: the install, then the GPU workers, checked
through the bot's own path (issue 12), against a real redis-server."""

from __future__ import annotations

import asyncio

from bot.cli.console import selftest_params
from bot.cli.fleet_check import fleet_selftest
from bot.jobs.engines import local_engine
from tests.test_fleet import Fleet, console, fleet_bot, fleet_settings  # noqa: F401 (fixtures)


async def test_selftest_checks_the_install_then_each_model_on_the_workers(fleet_bot):  # noqa: F811
    _, fleet = fleet_bot
    code, out, err = await console(fleet.settings, "selftest")
    assert code == 2, "no worker yet: the install is fine, the fleet has nobody"
    assert out.startswith("OK build "), "the local check ran first"
    assert err.strip().splitlines()[-1] == (
        "error: no GPU worker is running for SDBOT_QUEUE_URL: start one with python -m bot worker"
    )
    worker = await fleet.start("gpu-1")
    code, out, err = await console(fleet.settings, "selftest")
    assert code == 0, err
    local, workers, model = out.splitlines()
    assert local.startswith("OK build ")
    assert workers == "fleet: 1 GPU worker: gpu-1 (tiny)"
    assert model.startswith("OK fleet tiny: 64x64, 4 steps in ")
    assert worker.served == 1, "the image was made by the worker"


async def test_a_model_no_live_worker_serves_fails_the_selftest_by_name(
    make_settings, redis_server, tiny_sd1, capsys
):
    tiny = {"source": str(tiny_sd1), "default_size": (64, 64)}
    settings = make_settings(queue_url=redis_server.url, models={"tiny": tiny, "rare": tiny})
    fleet = Fleet(settings, redis_server.url, lease=1.0)
    try:
        only_tiny = local_engine(settings, {"tiny": settings.model_specs()["tiny"]})
        worker = await fleet.start("gpu-1", only_tiny)
        code = await asyncio.to_thread(fleet_selftest, settings, selftest_params)
    finally:
        await fleet.stop_all()
    assert code == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "fleet: 1 GPU worker: gpu-1 (tiny)"
    assert "FAILED fleet rare: no live worker serves it (its SDBOT_MODELS)" in lines
    assert any(line.startswith("OK fleet tiny: ") for line in lines)
    assert worker.served == 1, "rare was never sent: it would have waited forever"

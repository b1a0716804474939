"""Kill the bot with SIGKILL while a job runs; a new process finishes or refunds every job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def harness(phase: str, data: Path, model: Path) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SDBOT_")}
    environment.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash_harness", phase, str(data), str(model)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_mid_job_then_restart_finishes_every_job_exactly_once(tmp_path, tiny_sd1):
    data = tmp_path / "var"
    first = harness("first", data, tiny_sd1)
    line = first.stdout.readline()
    if not line.startswith("RUNNING "):
        first.kill()
    assert line.startswith("RUNNING "), first.stderr.read()
    killed_job = int(line.split()[1])
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL

    second = harness("second", data, tiny_sd1)
    try:
        out, err = second.communicate(timeout=300)
    finally:
        second.kill()
    assert second.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    statuses = {job["id"]: job for job in report["jobs"]}
    assert len(statuses) == 3
    assert all(job["status"] == "succeeded" for job in statuses.values()), statuses
    assert statuses[killed_job]["attempts"] == 2, "the interrupted job ran once more"
    assert report["problems"] == []
    # Each job was charged exactly once: 50 to start, minus one credit each.
    assert report["balances"] == {"alice": 49, "bob": 49, "carol": 49}
    # The interactions died with the first process: results came as new channel messages
    # (jobs that had already finished before the kill were posted by their interaction).
    assert any(f"job {killed_job} finished after a restart" in text for text in report["posted"])

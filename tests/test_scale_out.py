"""`bench/scale_out.py` keeps running and keeps saying what issue 12 asks of the fleet: the
throughput at each worker count (each worker a process of its own), the bot's dispatch
overhead per job beside a worker's idle gap between two batches (median, worst, how many,
as the worker processes wrote them down on SIGTERM), and the takeover after a worker
process is killed with SIGKILL."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import DEADLINE
from tests.redis_server import require_redis_server

ROOT = Path(__file__).resolve().parent.parent
FIGURE = r"median (\d+\.\d) ms, worst (\d+\.\d) ms"


def test_the_scale_out_bench_says_the_bots_share_and_the_workers_gap() -> None:
    require_redis_server(DEADLINE)
    argv = ["--workers", "1,2", "--per-image", "0.02", "--lease", "0.6", "--jobs", "8"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale_out.py"), *argv],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "workers: 1/2 separate OS processes" in out, out
    assert re.search(r"^ +1 +\d+\.\d\d +1\.00 +0\.9$", out, re.MULTILINE), out
    assert re.search(r"^ +2 +\d+\.\d\d +\d\.\d\d +1\.8$", out, re.MULTILINE), out
    # Eight jobs on one worker: seven outcomes each followed by the next batch.
    share = re.search(
        rf"the bot's dispatch overhead per job .*batches of 1 job\): {FIGURE} over 7 batches", out
    )
    gap = re.search(rf"a worker's GPU idle between two batches: {FIGURE} over 7 gaps", out)
    assert share, out
    assert gap, out
    for found in (share, gap):
        assert float(found.group(1)) <= float(found.group(2))
    # Its own share is within the worker's gap, which holds it and the worker's two trips.
    assert float(share.group(1)) < float(gap.group(1))
    killed = r"killed \(SIGKILL\) mid-batch: its batch ran elsewhere (\d+\.\d) s later"
    taken = re.search(rf"{killed} \(lease 0\.6 s\)", out)
    assert taken, out
    # A claim is renewed each third of a lease, so it is idle two thirds of one at least.
    assert float(taken.group(1)) >= 0.4
    # It was the survivor process that took the batch over, and its own log says so.
    assert "worker survivor: took over sdbot:batches:standin" in done.stderr, done.stderr

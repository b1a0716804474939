"""Peak memory (RSS, on the CPU) of each memory mode, and of a 2048x2048 VAE decode whole and
in tiles. Each case runs in a fresh process, so each peak is its own.

    python bench/memory.py                    # every case, a few minutes on 2 cores
    python bench/memory.py --case vae-1024-tiled

Cases:
- `sd15-512-<mode>`: the SD 1.5 architecture (random weights, fp32) placed as `<mode>`
  places it on a CPU (engine/pipelines/memory.py: VAE slicing in medium and low, attention
  slicing in low; the offloads need CUDA), two images at 512x512, 2 steps, as the engine
  runs a job;
- `vae-<side>-tiled` / `vae-<side>-whole`: SD's VAE decoding one <side>x<side> picture with
  the engine's tiling (tiles past 1.5x the native side) or in one piece. The whole 2048
  decode runs under a 20 GiB address-space limit and says so when it does not fit.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CASES = (
    "sd15-512-high",
    "sd15-512-medium",
    "sd15-512-low",
    "vae-1024-whole",
    "vae-1024-tiled",
    "vae-2048-tiled",
    "vae-2048-whole",
)
WHOLE_2048_LIMIT = 20 * 2**30


def rss_now() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_case(case: str) -> None:
    import torch

    from engine.worker import quiet_libraries

    quiet_libraries()
    torch.manual_seed(0)
    started = time.perf_counter()
    if case.startswith("sd15"):
        baseline = generate_in_mode(case.rsplit("-", 1)[1])
    else:
        _, side, how = case.split("-")
        baseline = decode(int(side), tiled=how == "tiled")
    seconds = time.perf_counter() - started
    peak = peak_rss()
    print(
        f"{case:18s} peak RSS {peak / 2**30:6.2f} GiB, above the loaded model "
        f"{(peak - baseline) / 2**30:6.2f} GiB ({seconds:.0f} s)"
    )


def generate_in_mode(mode: str) -> int:
    import torch

    from bench.architectures import sd15_architecture
    from engine.api.jobs import EngineJob
    from engine.api.memory import plan_for
    from engine.api.params import GenerationParams
    from engine.api.specs import ModelSpec
    from engine.pipelines.loading import LoadedModel
    from engine.pipelines.memory import place
    from engine.pipelines.txt2img import generate_batch

    with tempfile.TemporaryDirectory() as scratch:
        pipe = sd15_architecture(Path(scratch))
    plan = plan_for(mode)  # type: ignore[arg-type]
    place(pipe, plan, torch.device("cpu"), "sd1")
    loaded = LoadedModel(ModelSpec("sd15", "random"), pipe, "sd1", None, 0.0, plan=plan)
    baseline = rss_now()
    params = GenerationParams(
        prompt="a lighthouse",
        negative="",
        seed=1,
        steps=2,
        cfg=7.0,
        width=512,
        height=512,
        sampler="Euler a",
        count=2,
        model="sd15",
    )
    with torch.inference_mode():
        generate_batch(loaded, [EngineJob(1, params)], preview_interval=3600.0)
    return baseline


def decode(side: int, tiled: bool) -> int:
    import torch

    from bench.architectures import sd_vae
    from engine.api.memory import plan_for
    from engine.pipelines.memory import fit_vae

    vae = sd_vae(512)
    if tiled:
        fit_vae(vae, plan_for("high"), "sd1")
    baseline = rss_now()
    if side >= 2048 and not tiled:
        resource.setrlimit(resource.RLIMIT_AS, (WHOLE_2048_LIMIT, WHOLE_2048_LIMIT))
    latents = torch.randn(1, 4, side // 8, side // 8)
    with torch.inference_mode():
        image = vae.decode(latents).sample
    assert image.shape[-1] == side
    return baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=CASES)
    args = parser.parse_args()
    if args.case:
        run_case(args.case)
        return
    import torch

    print(f"bench/memory.py: CPU, {os.cpu_count()} cores, torch {torch.__version__}, float32")
    for case in CASES:
        done = subprocess.run(
            [sys.executable, __file__, "--case", case], capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            print(done.stdout.strip().splitlines()[-1], flush=True)
            continue
        last = (done.stderr.strip().splitlines() or ["killed"])[-1]
        limit = " (under a 20 GiB address-space limit)" if case == "vae-2048-whole" else ""
        print(f"{case:18s} did not finish{limit}: {last[:160]}", flush=True)


if __name__ == "__main__":
    main()

"""`scale`: 1..N simulated devices with trivial host work, and driver/actor memory at two sizes."""

from __future__ import annotations

import json
from pathlib import Path

from rayinfer.actors.model import available_cpus
from benchmarks.common import _rayinfer, start_ray
from rayinfer.jobs.format import format_table


def _null_run(devices: int, samples: int, latency_ms: float, capacity: int, out: Path) -> dict:
    uri = f"sim://?latency_ms={latency_ms}&capacity={capacity}&input=1x1&output=1x1"
    _, run = _rayinfer(dict(task="null", data_root=".", model=uri, output=str(out), limit=samples,
                            resource="sim_device", actors=devices))
    return run


def run_scale_bench(max_devices: int, latency_ms: float, capacity: int, seconds: float,
                    memory_sizes: tuple[int, int]) -> dict[str, float]:
    import subprocess
    import sys
    import tempfile

    cpus = available_cpus()
    work = Path(tempfile.mkdtemp(prefix="rayinfer-scale-"))
    start_ray(cpus, {"sim_device": max_devices})
    results: dict[str, float] = {}
    rows: list[list[object]] = []
    d = 1
    while d <= max_devices:
        ideal = d * capacity / (latency_ms / 1000)
        n = int(min(20000, max(200, ideal * seconds)))
        run = _null_run(d, n, latency_ms, capacity, work / f"d{d}")
        achieved = n / run["timings"]["inference_s"]
        busy = [a["busy_fraction"] for a in run["actors"] if a.get("busy_fraction") is not None]
        results[f"efficiency_{d}"] = achieved / ideal
        rows.append([d, n, ideal, achieved, f"{achieved / ideal:.1%}", f"{min(busy):.2f}" if busy else "-"])
        d *= 2
    import ray

    ray.shutdown()
    # memory: the same job at two sizes, each in a fresh process so peaks are its own
    mem = {}
    for n in memory_sizes:
        out = work / f"mem{n}"
        cmd = [sys.executable, "-m", "rayinfer.jobs", "run", "null", "--data-root", ".", "--limit", str(n), "--quiet",
               "--no-report", "--model", f"sim://?latency_ms=1&capacity={capacity}&input=1x1&output=1x1",
               "--output", str(out)]
        subprocess.run(cmd, check=True, capture_output=True)
        mem[n] = json.loads((out / "run.json").read_text())["memory"]
    small, large = memory_sizes
    print(f"scale: simulated devices (C={capacity}, {latency_ms:g} ms), one actor each, {cpus} CPUs")
    print(format_table(["devices", "samples", "ideal/s", "achieved/s", "efficiency", "min busy"], rows))
    print(format_table(["samples", "driver peak RSS MB", "actor peak RSS MB"],
                       [[n, mem[n]["driver_peak_rss_mb"], mem[n]["actor_peak_rss_mb"]] for n in memory_sizes]))
    results["driver_rss_growth"] = mem[large]["driver_peak_rss_mb"] / mem[small]["driver_peak_rss_mb"] - 1
    results["actor_rss_growth"] = mem[large]["actor_peak_rss_mb"] / mem[small]["actor_peak_rss_mb"] - 1
    return {k: round(v, 4) for k, v in results.items()}

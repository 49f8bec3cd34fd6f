"""`scale`: 1..N simulated devices with trivial host work, and driver/actor memory at two sizes."""

from __future__ import annotations

import json
from pathlib import Path

from rayinfer.actors.model import available_cpus
from benchmarks.common import _rayinfer, device_rate, sim_uri, start_ray
from rayinfer.actors.backends.simulated import SimulatedModel
from rayinfer.actors.batching import SIZES
from rayinfer.jobs.format import format_table


def _null_run(devices: int, samples: int, uri: str, out: Path) -> dict:
    _, run = _rayinfer(dict(task="null", data_root=".", model=uri, output=str(out), limit=samples,
                            resource="sim_device", actors=devices))
    return run


def run_scale_bench(max_devices: int, latency_ms: float, capacity: int, seconds: float,
                    memory_sizes: tuple[int, int], device: str = "streams",
                    per_item_ms: float = 0.25) -> dict[str, float]:
    """`device`: streams (`capacity` streams of `latency_ms`) or gpu (`capacity` engines,
    `latency_ms` fixed + `per_item_ms` per sample, at the batch --batch auto picks). The ideal
    is the devices' declared rate (run.json's `device_rate`, summed)."""
    import subprocess
    import sys
    import tempfile

    cpus = available_cpus()
    work = Path(tempfile.mkdtemp(prefix="rayinfer-scale-"))
    start_ray(cpus, {"sim_device": max_devices})
    results: dict[str, float] = {}
    rows: list[list[object]] = []
    d = 1
    uri = sim_uri(device, latency_ms, capacity, per_item_ms)
    single = SimulatedModel.from_uri(uri)
    best = single.rate(max(SIZES)) if single.batches else single.rate(1)  # the most one device takes
    while d <= max_devices:
        n = int(min(20000, max(200, d * (best or 0.0) * seconds)))
        run = _null_run(d, n, uri, work / f"d{d}")
        ideal = device_rate(run)
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
               "--no-report", "--model", sim_uri(device, 1.0, capacity, per_item_ms),
               "--output", str(out)]
        subprocess.run(cmd, check=True, capture_output=True)
        mem[n] = json.loads((out / "run.json").read_text())["memory"]
    small, large = memory_sizes
    print(f"scale: simulated devices ({uri}), one actor each, {cpus} CPUs")
    print(format_table(["devices", "samples", "ideal/s", "achieved/s", "efficiency", "min busy"], rows))
    print(format_table(["samples", "driver peak RSS MB", "actor peak RSS MB"],
                       [[n, mem[n]["driver_peak_rss_mb"], mem[n]["actor_peak_rss_mb"]] for n in memory_sizes]))
    results["driver_rss_growth"] = mem[large]["driver_peak_rss_mb"] / mem[small]["driver_peak_rss_mb"] - 1
    results["actor_rss_growth"] = mem[large]["actor_peak_rss_mb"] / mem[small]["actor_peak_rss_mb"] - 1
    return {k: round(v, 4) for k, v in results.items()}

"""`accel --device gpu`: GPU-shaped simulated devices (a request of B samples takes
`fixed_ms + per_item_ms x B`), batched requests against single ones, in two regimes.

1. The device is the limit: the `null` task (host work trivial), `--batch auto` and then
   `--batch 1`. The device bound at a batch B is devices x B / (fixed + per_item x B): the
   run at auto is held to it at the batch auto chose, and to the run at batch 1.
2. The host is the limit: the COCO task's real read, JPEG decode, letterbox, decode + NMS
   and rows on this machine's cores, the devices returning a real YOLOv8n output;
   `--batch auto` against `--batch 1`, alternating runs, medians. Batching must cost nothing
   here. The host's own bound (`host_bound_loaded`: cores / the seconds per image of every
   host step with every core running them at once) is measured as the accel bench does.

Figures are steady rates (samples/s from the first result to the last, actor start-up
excluded), each from its own job.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.accel import STEPS, device_output, host_costs
from benchmarks.common import _bench_set, _rayinfer, sim_uri, start_ray
from rayinfer.actors.model import available_cpus
from rayinfer.jobs.format import format_table


def _steady(run: dict[str, Any]) -> float:
    return float(run["throughput"]["samples_per_s"])


def _chosen(run: dict[str, Any]) -> int:
    return int(run["actors"][0]["batch"])


def run_gpu_accel_bench(data_root: Path, images: int, devices: int, fixed_ms: float, per_item_ms: float,
                        output_model: Path | None = None, null_seconds: float = 6.0,
                        repeat: int = 2) -> dict[str, Any]:
    cpus = available_cpus()
    work, root, ds, samples, _ = _bench_set(data_root, images, "rayinfer-accel-gpu-")
    start_ray(cpus, {"sim_device": devices})

    # 1. the device is the limit
    null_uri = sim_uri("gpu", fixed_ms, 1, per_item_ms)
    rate_1 = devices * 1 / ((fixed_ms + per_item_ms) / 1000)
    n1 = int(max(500, rate_1 * null_seconds))
    _, unbatched = _rayinfer(dict(task="null", data_root=".", model=null_uri, output=str(work / "null-b1"),
                                  limit=n1, actors=devices, resource="sim_device", batch="1"))
    # as many samples as the fastest batch would take `null_seconds` for
    n_auto = int(max(2000, devices / (per_item_ms / 1000) * null_seconds))
    _, batched = _rayinfer(dict(task="null", data_root=".", model=null_uri, output=str(work / "null-auto"),
                                limit=n_auto, actors=devices, resource="sim_device"))
    chosen = _chosen(batched)
    device_bound = devices * chosen / ((fixed_ms + per_item_ms * chosen) / 1000)
    rate_batched, rate_unbatched = _steady(batched), _steady(unbatched)
    fill = statistics.mean(a["batch_fill"] for a in batched["actors"])

    # 2. the host is the limit
    output_file, output = device_output(ds, samples, output_model, work)
    coco_uri = sim_uri("gpu", fixed_ms, 1, per_item_ms, "input=1x3x640x640&output=1x84x8400", output_file)
    before = host_costs(ds, samples, output, 96, cpus)
    host: dict[str, list[float]] = {"1": [], "auto": []}
    coco_chosen = []
    for i in range(repeat):
        for batch in ("1", "auto"):
            _, run = _rayinfer(dict(task="coco", data_root=str(root), model=coco_uri, output=str(work / f"coco-{batch}"),
                                    actors=devices, resource="sim_device", batch=batch))
            host[batch].append(_steady(run))
            if batch == "auto":
                coco_chosen.append(_chosen(run))
    after = host_costs(ds, samples, output, 96, cpus)
    loaded_s = sum((before[s] + after[s]) / 2 for s in STEPS)
    host_bound_loaded = cpus / loaded_s
    host_auto, host_1 = statistics.median(host["auto"]), statistics.median(host["1"])

    print(f"accel --device gpu: {devices} GPU-shaped simulated devices ({fixed_ms:g} ms + {per_item_ms:g} ms per "
          f"sample per request), {cpus} CPUs")
    print(format_table(["null task (host work trivial)", "samples/s"], [
        [f"--batch auto (chose {chosen}, mean fill {fill:.1f})", rate_batched],
        ["--batch 1", rate_unbatched],
        [f"device bound at batch {chosen}", device_bound],
        ["device bound at batch 1", rate_1],
    ]))
    print(format_table([f"COCO task ({images} images, host work real)", "samples/s"], [
        [f"--batch auto (chose {coco_chosen}), runs {host['auto']}", host_auto],
        [f"--batch 1, runs {host['1']}", host_1],
        [f"host bound: {cpus} cores / {loaded_s * 1e3:.2f} ms (every core at once)", host_bound_loaded],
    ]))
    print(f"null: auto / bound = {rate_batched / device_bound:.3f}, auto / batch 1 = "
          f"{rate_batched / rate_unbatched:.2f}; COCO: auto / batch 1 = {host_auto / host_1:.3f}, "
          f"batch 1 / host bound = {host_1 / host_bound_loaded:.2f}")
    return {"device_bound": round(device_bound, 2), "batch_chosen": chosen, "batch_fill": round(fill, 2),
            "rate_batched": round(rate_batched, 2), "rate_unbatched": round(rate_unbatched, 2),
            "ratio_to_bound": round(rate_batched / device_bound, 4),
            "ratio_to_unbatched": round(rate_batched / rate_unbatched, 3),
            "host_bound_loaded": round(host_bound_loaded, 2), "host_rate_auto": round(host_auto, 2),
            "host_rate_batch1": round(host_1, 2), "host_ratio": round(host_auto / host_1, 4),
            "host_batch_chosen": coco_chosen[0] if coco_chosen else None}

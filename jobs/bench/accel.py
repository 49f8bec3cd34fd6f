"""`accel`: real JPEG decode + letterbox feeding simulated devices: Ray Data vs rayinfer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rayinfer.actors.model import TensorSpec, available_cpus
from rayinfer.jobs.bench.common import _bench_set, _rayinfer, start_ray
from rayinfer.jobs.format import format_table


class SimDeviceUDF:
    """Ray Data stage owning one simulated device: batch-1 requests, one after another."""

    def __init__(self, latency_ms: float, capacity: int) -> None:
        from rayinfer.actors.backends.simulated import SimulatedModel

        self.device = SimulatedModel(latency_ms, capacity)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for image in batch["image"]:
            self.device.run({"images": image[None]})
        return {"done": np.ones(len(batch["image"]), np.int8)}


def _accel_adapter(category_ids: Sequence[int] = ()) -> Any:
    """The YOLOv8 adapter (640x640 input) whose preprocessing every accel mode runs."""
    from rayinfer.actors.families.detection import DetectionOptions
    from rayinfer.actors.families.yolov8 import YoloV8

    spec = [TensorSpec("images", (1, 3, 640, 640), np.dtype(np.float32))]
    return YoloV8(spec, DetectionOptions(), category_ids)


def _decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data's decode stage: the same read + preprocessing as rayinfer's adapter."""
    from rayinfer.datasets.base import Sample
    from rayinfer.datasets.images import read_image

    adapter = _accel_adapter()
    out = []
    for path in batch["path"]:
        feed, _ = adapter.preprocess(read_image(Path(path)), Sample(str(path), str(path), {}))
        out.append(feed[adapter.input_name][0])
    return {"image": np.stack(out)}


def _raydata_accel(paths: list[str], devices: int, latency_ms: float, capacity: int, batch: int) -> float:
    import ray.data

    start_ray(available_cpus(), {"sim_device": devices})
    t0 = time.perf_counter()
    ds = (ray.data.from_items([{"path": p} for p in paths])
          .map_batches(_decode_batch, batch_size=batch)
          .map_batches(SimDeviceUDF, fn_constructor_args=(latency_ms, capacity), batch_size=batch,
                       compute=ray.data.ActorPoolStrategy(size=devices), num_cpus=0, resources={"sim_device": 1}))
    n = sum(len(b["done"]) for b in ds.iter_batches(batch_size=None))
    return n / (time.perf_counter() - t0)


def run_accel_bench(data_root: Path, images: int, devices: int, latency_ms: float, capacity: int) -> dict[str, float]:
    cpus = available_cpus()
    work, root, ds, samples, paths = _bench_set(data_root, images, "rayinfer-accel-")
    adapter = _accel_adapter(ds.category_ids)
    t0 = time.perf_counter()
    for s in samples[:40]:
        adapter.preprocess(ds.load(s), s)
    pre = (time.perf_counter() - t0) / 40
    device_bound = devices * capacity / (latency_ms / 1000)
    cpu_bound = cpus / pre
    bound = min(device_bound, cpu_bound)

    rows: list[list[object]] = []
    best, best_b = 0.0, 0
    for b in (1, 4, 16, 64):
        rate = _raydata_accel(paths, devices, latency_ms, capacity, b)
        rows.append([f"raydata batch {b}", rate])
        if rate > best:
            best, best_b = rate, b
    uri = f"sim://?latency_ms={latency_ms}&capacity={capacity}&input=1x3x640x640&output=1x84x8400"
    start_ray(cpus, {"sim_device": devices})
    rate, run = _rayinfer(dict(task="coco", data_root=str(root), model=uri, output=str(work / "out"),
                               resource="sim_device"))
    busy = [a["busy_fraction"] for a in run["actors"]]
    rows.append(["rayinfer", rate])
    rows.append(["rayinfer without actor start-up", run["throughput"]["samples_per_s"]])
    rows.append([f"bound = min({devices} x {capacity} / {latency_ms:g} ms = {device_bound:.0f}, "
                 f"{cpus} cores / {pre * 1e3:.1f} ms = {cpu_bound:.0f})", bound])
    print(f"accel: {images} images, {devices} simulated devices (C={capacity}, {latency_ms:g} ms), {cpus} CPUs")
    print(format_table(["mode", "img/s"], rows))
    print(f"rayinfer / bound = {rate / bound:.2f}; rayinfer / raydata (batch {best_b}) = {rate / best:.2f}; "
          f"device busy fraction {', '.join(f'{b:.2f}' for b in busy)}")
    return {"raydata": round(best, 2), "rayinfer": round(rate, 2), "bound": round(bound, 2),
            "rayinfer_steady": run["throughput"]["samples_per_s"], "busy_min": min(busy)}

"""`accel`: real JPEG decode + letterbox feeding simulated devices: Ray Data vs rayinfer,
against an honest bound.

The devices (`sim://`, fixed latency, `capacity` streams each) return a real YOLOv8n
output for one image of the set (`--output-model`: run once here), so the host decodes
and filters as many candidates as for real. The bound is min(device side, host side):

- device side: devices x streams / latency;
- host side: cores / the host's seconds per image for every step a sample needs (read +
  JPEG decode, letterbox + blob, output decode + NMS, its row in a shard table), one
  image at a time (`host_bound`, the plain loop) and with every core running that loop at
  once (`host_bound_loaded`: what the cores cost each other: caches, memory, the GIL);
  measured just before and just after rayinfer's run and averaged (the machine's speed
  drifts: a bound measured minutes apart from the job once came out 1.5x slower).

Occupancy is the devices' mean busy streams / streams over the inference phase (for a
fixed-latency device: its rate / its bound), not "at least one request on the device".
`host_ms_per_image` is the CPU the actors' processes spent per image (every thread),
against the plain loop's.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rayinfer.actors.model import TensorSpec, available_cpus
from benchmarks.common import _bench_set, _rayinfer, start_ray
from rayinfer.jobs.format import format_table

#: host steps per image, in the order a sample goes through them
STEPS = ("load", "preprocess", "postprocess", "rows")
ROWS_PER_TABLE = 16  # the job's default shard size: rows are built a shard at a time


class SimDeviceUDF:
    """Ray Data stage owning one simulated device: batch-1 requests, one after another,
    each output decoded as rayinfer's actors do."""

    def __init__(self, latency_ms: float, capacity: int, output_file: str | None) -> None:
        from rayinfer.actors.backends.simulated import SimulatedModel

        output = np.load(output_file) if output_file else None
        self.device = SimulatedModel(latency_ms, capacity, output=output)
        self.family = _accel_family(range(80))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from rayinfer.datasets.base import Sample
        from rayinfer.datasets.images import Letterbox

        found = []
        for i, image in enumerate(batch["image"]):
            out = self.device.run({"images": image[None]})
            lb = Letterbox(*(batch[k][i].item() for k in ("gain_x", "gain_y", "left", "top", "height", "width")))
            found.append(len(self.family.postprocess(out, lb, Sample("0", "0.jpg", {"image_id": 0}))["score"]))
        return {"detections": np.asarray(found)}


def _accel_family(category_ids: Sequence[int] = (), reduced_decode: bool = False) -> Any:
    """The YOLOv8 family (640x640 input) whose pre- and postprocessing every accel mode runs."""
    from rayinfer.actors.families.detection import DetectionOptions
    from rayinfer.actors.families.yolov8 import YoloV8

    spec = [TensorSpec("images", (1, 3, 640, 640), np.dtype(np.float32))]
    return YoloV8(spec, DetectionOptions(reduced_decode=reduced_decode), list(category_ids))


def _decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data's decode stage: the same read + preprocessing as rayinfer's family."""
    from rayinfer.datasets.base import Sample
    from rayinfer.datasets.images import read_image

    family = _accel_family()
    out, boxes = [], []
    for path in batch["path"]:
        feed, lb = family.preprocess(read_image(Path(path)), Sample(str(path), str(path), {}))
        out.append(feed[family.input_name][0])
        boxes.append((lb.gain_x, lb.gain_y, lb.left, lb.top, lb.height, lb.width))
    columns = np.asarray(boxes, np.float64).T
    fitted = {k: columns[i] for i, k in enumerate(("gain_x", "gain_y"))}
    fitted.update({k: columns[i + 2].astype(np.int64) for i, k in enumerate(("left", "top", "height", "width"))})
    return {"image": np.stack(out), **fitted}


def _raydata_accel(paths: list[str], devices: int, latency_ms: float, capacity: int, batch: int,
                   output_file: str | None) -> float:
    import ray.data

    start_ray(available_cpus(), {"sim_device": devices})
    t0 = time.perf_counter()
    ds = (ray.data.from_items([{"path": p} for p in paths])
          .map_batches(_decode_batch, batch_size=batch)
          .map_batches(SimDeviceUDF, fn_constructor_args=(latency_ms, capacity, output_file), batch_size=batch,
                       compute=ray.data.ActorPoolStrategy(size=devices), num_cpus=0, resources={"sim_device": 1}))
    n = sum(len(b["detections"]) for b in ds.iter_batches(batch_size=None))
    return n / (time.perf_counter() - t0)


def real_output(ds: Any, sample: Any, model: Path, dest: Path) -> Path:
    """`model`'s output for `sample` saved as .npy (what the simulated devices return)."""
    from rayinfer.actors.backends.onnxruntime import OnnxModel, RuntimeOptions

    m = OnnxModel(model, RuntimeOptions(intra_op_threads=1))
    family = _accel_family(ds.category_ids)
    feed, _ = family.preprocess(ds.load(sample), sample)
    np.save(dest, m.run(feed)[0])
    return dest


def device_output(ds: Any, samples: Sequence[Any], output_model: Path | None, work: Path) -> tuple[str | None, np.ndarray]:
    """What the simulated devices return: `output_model`'s real output for the set's first
    image, saved as .npy for their URI (its path, and the array), or zeros where there is no
    such model (then decode + NMS cost less than for real, and it says so)."""
    output_file = None
    if output_model is not None and output_model.exists():
        output_file = str(real_output(ds, samples[0], output_model, work / "output.npy"))
    else:
        print(f"no --output-model ({output_model}): the devices return zeros, so decode + NMS cost less than for real")
    return output_file, np.load(output_file) if output_file else np.zeros((1, 84, 8400), np.float32)


def host_costs(ds: Any, samples: Sequence[Any], output: np.ndarray, n: int, threads: int,
               family: Any = None) -> dict[str, float]:
    """Seconds per image for each of `STEPS`, the loop run by `threads` threads at once
    (each times its own steps, so the costs include what the threads cost each other).
    `family`: the YOLOv8 steps (default: the accel bench's, at the decoding defaults)."""
    from rayinfer.actors.rows import to_table
    from rayinfer.datasets.base import rows_schema

    family = family or _accel_family(ds.category_ids)
    load_options = {"draft": family.draft} if family.draft else {}
    schema = rows_schema(family.schema)
    extra = {"file": "", "shard": 0, "actor": "bench", **{f"{k}_ms": 0.0 for k in
                                                          ("load", "preprocess", "queue", "infer", "postprocess")}}
    totals: list[dict[str, float]] = []
    outputs = [output]

    def loop(first: int) -> None:
        spent = dict.fromkeys(STEPS, 0.0)
        rows: list[dict[str, Any]] = []
        for i in range(first, first + n):
            s = samples[i % len(samples)]
            t0 = time.perf_counter()
            raw = ds.load(s, **load_options)
            t1 = time.perf_counter()
            _, lb = family.preprocess(raw, s)
            t2 = time.perf_counter()
            row = family.postprocess(outputs, lb, s)
            row.update(sample_id=s.sample_id, **extra)
            rows.append(row)
            t3 = time.perf_counter()
            if len(rows) == ROWS_PER_TABLE:
                to_table(rows, schema)
                rows = []
            t4 = time.perf_counter()
            for step, dt in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                spent[step] += dt
        totals.append(spent)

    loop(0)  # warm: first calls import and allocate
    totals.clear()
    workers = [threading.Thread(target=loop, args=(k * n,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {step: sum(t[step] for t in totals) / (n * threads) for step in STEPS}


def run_accel_bench(data_root: Path, images: int, devices: int, latency_ms: float, capacity: int,
                    output_model: Path | None = None, grid: Sequence[int] = (1, 4, 16, 64)) -> dict[str, float]:
    cpus = available_cpus()
    work, root, ds, samples, paths = _bench_set(data_root, images, "rayinfer-accel-")
    output_file, output = device_output(ds, samples, output_model, work)
    device_bound = devices * capacity / (latency_ms / 1000)

    rows: list[list[object]] = []
    best, best_b = 0.0, 0
    for b in grid:
        rate = _raydata_accel(paths, devices, latency_ms, capacity, b, output_file)
        rows.append([f"raydata batch {b}", rate])
        if rate > best:
            best, best_b = rate, b
    uri = f"sim://?latency_ms={latency_ms:g}&capacity={capacity}&input=1x3x640x640&output=1x84x8400"
    if output_file:
        uri += f"&output_file={output_file}"
    start_ray(cpus, {"sim_device": devices})
    # the host's costs just before and just after the job, averaged: a shared machine's speed drifts
    # by tens of percent over minutes, and a bound measured apart from the job compares with
    # another machine
    before = [host_costs(ds, samples, output, 96, threads) for threads in (1, cpus)]
    rate, run = _rayinfer(dict(task="coco", data_root=str(root), model=uri, output=str(work / "out"),
                               resource="sim_device"))
    after = [host_costs(ds, samples, output, 96, threads) for threads in (1, cpus)]
    plain, loaded = ({step: (b[step] + a[step]) / 2 for step in STEPS} for b, a in zip(before, after))
    plain_s, loaded_s = sum(plain.values()), sum(loaded.values())
    host_bound, host_bound_loaded = cpus / plain_s, cpus / loaded_s
    bound = min(device_bound, host_bound_loaded)
    driver_cpu = run["timings"]["driver_cpu_s"]  # over the inference phase
    actors = run["actors"]
    done = sum(a["samples"] for a in actors)
    host_ms = sum(a["host_cpu_s"] for a in actors) * 1000 / max(1, done)
    steady = run["throughput"]["samples_per_s"]
    occupancy = min(1.0, steady / device_bound)
    rows.append(["rayinfer", rate])
    rows.append(["rayinfer without actor start-up", steady])
    rows.append([f"device side: {devices} x {capacity} / {latency_ms:g} ms", device_bound])
    rows.append([f"host side: {cpus} cores / {plain_s * 1e3:.2f} ms (one image at a time)", host_bound])
    rows.append([f"host side loaded: {cpus} cores / {loaded_s * 1e3:.2f} ms (every core at once)", host_bound_loaded])
    rows.append(["bound = min(device side, host side loaded)", bound])
    print(f"accel: {images} images, {devices} simulated devices ({capacity} streams, {latency_ms:g} ms), {cpus} CPUs, "
          f"{os.cpu_count()} logical CPUs on the machine")
    print(format_table(["mode", "img/s"], rows))
    print(f"plain loop {sum(before[0].values()) * 1e3:.2f} ms before the job, {sum(after[0].values()) * 1e3:.2f} "
          f"after; every core at once {sum(before[1].values()) * 1e3:.2f} / {sum(after[1].values()) * 1e3:.2f} ms")
    print(format_table(["host step (ms per image)"] + list(STEPS) + ["total"],
                       [["one at a time"] + [plain[s] * 1e3 for s in STEPS] + [plain_s * 1e3],
                        ["every core at once"] + [loaded[s] * 1e3 for s in STEPS] + [loaded_s * 1e3]]))
    print(f"rayinfer / bound = {rate / bound:.2f} (steady {steady / bound:.2f}); rayinfer / raydata (batch {best_b}) = "
          f"{rate / best if best else float('nan'):.2f}; stream occupancy {occupancy:.2f}; host CPU per image {host_ms:.2f} ms in the actors "
          f"({host_ms / (plain_s * 1e3):.2f}x the plain loop), {driver_cpu * 1000 / max(1, done):.2f} ms in the driver")
    return {"raydata": round(best, 2), "raydata_batch": best_b, "rayinfer": round(rate, 2),
            "rayinfer_steady": steady, "bound": round(bound, 2), "device_bound": round(device_bound, 2),
            "host_bound": round(host_bound, 2), "host_bound_loaded": round(host_bound_loaded, 2),
            "occupancy": round(occupancy, 3), "host_ms_per_image": round(host_ms, 3),
            "plain_loop_ms_per_image": round(plain_s * 1e3, 3),
            "driver_ms_per_image": round(driver_cpu * 1000 / max(1, done), 3),
            "busy_min": min(a["busy_fraction"] for a in actors)}

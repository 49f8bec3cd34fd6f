"""Benchmarks that print figures (never timed asserts). Each prints a table and, as
its last line, one JSON object.

`python -m rayinfer.jobs.bench runtime --model M [--seconds S]`
    One model, no Ray: one request at a time vs the request queue with 1, 2, 4 and the
    automatic number of requests; `limit` = cores x single-thread rate. Keys: sync,
    jobs1, jobs2, jobs4, auto, limit (img/s).
`python -m rayinfer.jobs.bench pipeline --data-root D --model M --images N [--repeat K]`
    The whole COCO job vs a naive loop and Ray Data on the same N images (the set
    repeated). rayinfer runs K times (default 3), each between two measurements of the
    limits; medians are reported. `limit` adds up single-thread costs measured one image
    at a time; `limit_loaded` measures the same costs with every core running them at
    once. Keys: sync, raydata_default, raydata_best, rayinfer, rayinfer_steady, limit,
    limit_loaded (img/s).
`python -m rayinfer.jobs.bench accel --data-root D`
    Real JPEG decode + letterbox feeding simulated devices (Ray custom resource
    `sim_device`): Ray Data map_batches (best batch size) vs rayinfer, and the bound
    min(devices x C / latency, CPU preprocessing limit). Keys: raydata, rayinfer, bound.
`python -m rayinfer.jobs.bench scale`
    1..64 simulated devices, one actor each, trivial host work: achieved vs ideal
    samples/s, and peak memory at 1k vs 20k samples. Keys: efficiency_N, ...
`python -m rayinfer.jobs.bench memory --data-root D --model M [--sizes 1000,5000]`
    The whole COCO job (evaluation, coco_results.json and the report included) on the set
    repeated to each size, each in a fresh process: peak RSS of the driver process (its
    own getrusage, taken after the job returns) and of the actor. Keys: driver_mb_1k,
    driver_mb_5k, actor_mb_1k, actor_mb_5k (sizes named in thousands), driver_growth,
    actor_growth (5k / 1k - 1).

Each mode (and each Ray Data grid point) gets a freshly started Ray, so nothing one
leaves behind slows the next. Throughput of a Ray mode counts from the start of its
actors to its last result; rayinfer's metrics evaluation after inference is not counted.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rayinfer.actors.model import OnnxModel, RuntimeOptions, TensorSpec, available_cpus
from rayinfer.actors.queue import AsyncInferQueue

from rayinfer.jobs.format import format_table

log = logging.getLogger("rayinfer.jobs.bench")


def _dummy_feed(model: OnnxModel) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        s.name: rng.random(tuple(d or 1 for d in s.shape)).astype(s.dtype) for s in model.inputs
    }


def _timed_loop(step: Callable[[], None], seconds: float, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - t0)


def bench_sync(path: Path, seconds: float) -> float:
    """One request at a time on a default ONNX Runtime session (what most scripts do)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    feed = _dummy_feed(OnnxModel(path, RuntimeOptions(intra_op_threads=1)))
    return _timed_loop(lambda: sess.run(names, feed), seconds)


def bench_single_thread(path: Path, seconds: float) -> float:
    model = OnnxModel(path, RuntimeOptions(intra_op_threads=1))
    feed = _dummy_feed(model)
    return _timed_loop(lambda: model.run(feed), seconds)


def bench_queue(path: Path, jobs: int, seconds: float, options: RuntimeOptions) -> tuple[float, int, int]:
    """Keep every request busy for `seconds`; returns (img/s, jobs, threads per request)."""
    q = AsyncInferQueue(path, jobs=jobs, options=options)
    feed = _dummy_feed(q.model)  # type: ignore[arg-type]
    done = 0
    lock = threading.Lock()

    def count(request, _):
        nonlocal done
        with lock:
            done += 1

    q.set_callback(count)
    for _ in range(2 * len(q)):
        q.start_async(feed)
    q.wait_all()
    with lock:
        done = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        q.start_async(feed)
    q.wait_all()
    elapsed = time.perf_counter() - t0
    rate = done / elapsed
    threads = q.model.intra_op_threads  # type: ignore[attr-defined]
    n = len(q)
    q.close()
    return rate, n, threads


def run_runtime_bench(model: Path, seconds: float, providers: Sequence[str]) -> dict[str, float]:
    cpus = available_cpus()
    options = RuntimeOptions(providers=tuple(providers))
    rows: list[list[object]] = []
    results: dict[str, float] = {}

    results["sync"] = bench_sync(model, seconds)
    rows.append(["sync", 1, "default", results["sync"]])
    for jobs in (1, 2, 4):
        rate, n, threads = bench_queue(model, jobs, seconds, options)
        results[f"jobs{jobs}"] = rate
        rows.append([f"jobs{jobs}", n, threads, rate])
    rate, n, threads = bench_queue(model, 0, seconds, options)
    results["auto"] = rate
    rows.append([f"auto (jobs=0 -> {n})", n, threads, rate])
    single = bench_single_thread(model, seconds)
    results["limit"] = cpus * single
    rows.append([f"limit ({cpus} cores x 1-thread {single:.1f})", "-", 1, results["limit"]])

    print(f"model {model.name}, {cpus} CPUs, providers {list(providers)}, {seconds:.0f}s per mode")
    print(format_table(["mode", "requests", "threads/request", "img/s"], rows))
    best = max(results["jobs1"], results["jobs2"], results["jobs4"])
    print(f"auto / sync = {results['auto'] / results['sync']:.2f}x; auto / best fixed = {results['auto'] / best:.2f}x")
    return {k: round(v, 2) for k, v in results.items()}


# -- shared helpers --------------------------------------------------------------------------
def start_ray(cpus: int, resources: dict[str, float] | None = None) -> None:
    import ray

    from rayinfer.jobs.cluster import init_local_ray

    if ray.is_initialized():
        ray.shutdown()
    init_local_ray(num_cpus=cpus, resources=resources or {}, include_dashboard=False, log_to_driver=False,
                   logging_level=logging.ERROR)
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    except Exception:  # noqa: BLE001 - Ray Data not installed: its modes are skipped
        pass


def repeat_coco(src: Path, n: int, dest: Path) -> Path:
    """A COCO-layout folder of `n` images: the source images repeated (links) under new ids."""
    ann = json.loads((src / "annotations" / "instances_val2017.json").read_text())
    images = sorted(ann["images"], key=lambda im: im["id"])
    by_image: dict[int, list[dict]] = {}
    for a in ann["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    (dest / "val2017").mkdir(parents=True, exist_ok=True)
    (dest / "annotations").mkdir(exist_ok=True)
    out_images, out_anns = [], []
    for i in range(n):
        im = images[i % len(images)]
        new = dict(im, id=i + 1, file_name=f"{i + 1:012d}.jpg")
        link = dest / "val2017" / new["file_name"]
        if not link.exists():
            link.symlink_to((src / "val2017" / im["file_name"]).resolve())
        out_images.append(new)
        out_anns += [dict(a, id=len(out_anns) + k + 1, image_id=i + 1) for k, a in enumerate(by_image.get(im["id"], []))]
    data = dict(ann, images=out_images, annotations=out_anns)
    (dest / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return dest


def _bench_set(data_root: Path, images: int, prefix: str) -> tuple[Path, Path, Any, list, list[str]]:
    """(work folder, repeated COCO root, its dataset, samples, image paths)."""
    import tempfile

    from rayinfer.datasets.coco import CocoDataset

    work = Path(tempfile.mkdtemp(prefix=prefix))
    root = repeat_coco(data_root, images, work / "coco")
    ds = CocoDataset(root)
    samples = ds.samples()
    return work, root, ds, samples, [str(root / s.file) for s in samples]


def _rayinfer(cfg_kwargs: dict) -> tuple[float, dict]:
    """Run the full job; (samples/s from actor start to last result, run.json)."""
    from rayinfer.jobs.config import JobConfig
    from rayinfer.jobs.driver import run_job

    outcome = run_job(JobConfig(progress=False, report=False, overwrite=True, **cfg_kwargs))
    t = outcome.run["timings"]
    return outcome.run["counts"]["processed_this_run"] / (t["setup_s"] + t["inference_s"]), outcome.run


class DetectorUDF:
    """Ray Data callable class as its docs suggest: owns one ORT session, runs a batch of
    image paths one by one (the model takes batch 1) with rayinfer's own decode."""

    def __init__(self, model: str, threads: int) -> None:
        import onnxruntime as ort

        from rayinfer.actors.model import _spec
        from rayinfer.actors.yolo import DetectionOptions, YoloAdapter, detect_family

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
        outputs = [_spec(o) for o in self.session.get_outputs()]
        self.adapter = YoloAdapter(detect_family(outputs), [_spec(i) for i in self.session.get_inputs()],
                                   DetectionOptions(), list(range(outputs[0].shape[1] - 4)))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from rayinfer.datasets.base import Sample
        from rayinfer.datasets.images import read_image

        found = []
        for path in batch["path"]:
            sample = Sample(str(path), str(path), {"image_id": 0})
            feed, lb = self.adapter.preprocess(read_image(Path(path)), sample)
            record = self.adapter.postprocess(self.session.run(None, feed), lb, sample)
            found.append(len(record["score"]))
        return {"detections": np.asarray(found)}


def _raydata_detect(paths: list[str], model: str, actors: int, batch_size: int | None, threads: int) -> float:
    import ray.data

    start_ray(available_cpus())
    t0 = time.perf_counter()
    ds = ray.data.from_items([{"path": p} for p in paths]).map_batches(
        DetectorUDF, fn_constructor_args=(model, threads), batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=max(1, threads))
    n = sum(len(b["detections"]) for b in ds.iter_batches(batch_size=None))
    return n / (time.perf_counter() - t0)


def _per_image_costs(root: Path, model: Path, n: int = 24, threads: int = 1) -> dict[str, float]:
    """Seconds per image for decode+letterbox, single-thread inference and decode+NMS.

    `threads=1`: one image at a time with the other cores idle (the issue's `limit`).
    `threads=cores`: every core runs the same loop at once, each thread timing its own
    steps, so the costs include what the cores cost each other (shared caches, memory
    bandwidth, the GIL): the most any schedule of these steps can get from this machine.
    """
    from rayinfer.datasets.coco import CocoDataset
    from rayinfer.actors.yolo import DetectionOptions, YoloAdapter, detect_family

    ds = CocoDataset(root)
    m = OnnxModel(model, RuntimeOptions(intra_op_threads=1))
    adapter = YoloAdapter(detect_family(m.outputs), m.inputs, DetectionOptions(), ds.category_ids)
    samples = ds.samples()
    m.run(adapter.preprocess(ds.load(samples[0]), samples[0])[0])
    totals: list[tuple[float, float, float]] = []

    def loop(first: int) -> None:
        pre = inf = post = 0.0
        for i in range(first, first + n):
            s = samples[i % len(samples)]
            t0 = time.perf_counter()
            feed, lb = adapter.preprocess(ds.load(s), s)
            t1 = time.perf_counter()
            out = m.run(feed)
            t2 = time.perf_counter()
            adapter.postprocess(out, lb, s)
            t3 = time.perf_counter()
            pre, inf, post = pre + t1 - t0, inf + t2 - t1, post + t3 - t2
        totals.append((pre, inf, post))

    workers = [threading.Thread(target=loop, args=(k * n,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    images = n * threads
    return {stage: sum(t[i] for t in totals) / images for i, stage in enumerate(("preprocess", "inference", "postprocess"))}


def _limit(cpus: int, costs: Sequence[dict[str, float]]) -> tuple[float, dict[str, float]]:
    """cores / per-image seconds, from the mean of the given measurements' costs."""
    mean = {k: statistics.fmean(c[k] for c in costs) for k in costs[0]}
    return cpus / sum(mean.values()), mean


# -- pipeline ---------------------------------------------------------------------------------
def run_pipeline_bench(data_root: Path, model: Path, images: int, grid: bool, repeat: int = 3) -> dict[str, float]:
    from rayinfer.actors.yolo import DetectionOptions, YoloAdapter, detect_family

    cpus = available_cpus()
    work, root, ds, samples, paths = _bench_set(data_root, images, "rayinfer-bench-")
    results: dict[str, float] = {}
    rows: list[list[object]] = []

    # sync: decode, letterbox, run, NMS, one image at a time, default session
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    m = OnnxModel(model, RuntimeOptions(intra_op_threads=1))
    adapter = YoloAdapter(detect_family(m.outputs), m.inputs, DetectionOptions(), ds.category_ids)
    t0 = time.perf_counter()
    for s in samples:
        feed, lb = adapter.preprocess(ds.load(s), s)
        adapter.postprocess(sess.run(None, feed), lb, s)
    results["sync"] = len(samples) / (time.perf_counter() - t0)
    rows.append(["sync", "1 loop, default session", results["sync"]])

    results["raydata_default"] = _raydata_detect(paths, str(model), cpus, None, 0)
    rows.append(["raydata_default", f"{cpus} actors, default batch and session", results["raydata_default"]])
    best, best_desc = 0.0, ""
    combos = [(a, b, t) for a in (1, 2, 3, 4) for b in (1, 4, 16) for t in sorted({1, max(1, cpus // a)})]
    if not grid:
        combos = [(a, b, t) for a, b, t in combos if b == 4]
    for a, b, t in combos:
        rate = _raydata_detect(paths, str(model), a, b, t)
        log.info("raydata actors=%d batch=%d threads=%d: %.1f img/s", a, b, t, rate)
        if rate > best:
            best, best_desc = rate, f"{a} actors x {t} threads, batch {b}"
    results["raydata_best"] = best
    rows.append(["raydata_best", best_desc + f" (best of {len(combos)})", best])

    # rayinfer and the limits, `repeat` times in turn: this machine's speed drifts by several
    # percent from one minute to the next, so each run is compared with limits measured
    # right before and right after it (their mean), and the medians are reported (every
    # run is in the table). median_low: each figure is one run's own, so the limit row's
    # per-stage costs add up to the limit shown.
    rates, steadies, limits, loaded, busy, setting = [], [], [], [], 1.0, ""
    for _ in range(repeat):
        before = _per_image_costs(data_root, model), _per_image_costs(data_root, model, threads=cpus)
        start_ray(cpus)
        rate, run = _rayinfer(dict(task="coco", data_root=str(root), model=str(model), output=str(work / "out")))
        after = _per_image_costs(data_root, model), _per_image_costs(data_root, model, threads=cpus)
        a = run["actors"][0]
        setting = f"{len(run['actors'])} actor(s) x {a['requests']} requests, preprocess in {a.get('preprocess_in')}, automatic"
        busy = min(busy, a["busy_fraction"])
        rates.append(rate)
        steadies.append(run["throughput"]["samples_per_s"])
        limits.append(_limit(cpus, [before[0], after[0]]))
        loaded.append(_limit(cpus, [before[1], after[1]]))
        log.info("rayinfer run %d: %.1f img/s (%.1f steady), limit %.1f, every core loaded %.1f", len(rates), rate,
                 steadies[-1], limits[-1][0], loaded[-1][0])
    runs = f" (median of {repeat}: " + " / ".join(f"{r:.1f}" for r in rates) + ")" if repeat > 1 else ""
    results["rayinfer"] = statistics.median_low(rates)
    rows.append(["rayinfer", setting + runs, results["rayinfer"]])
    results["rayinfer_steady"] = statistics.median_low(steadies)
    rows.append(["rayinfer_steady", f"the same runs without actor start-up (busy >= {busy:.2f})",
                 results["rayinfer_steady"]])
    for key, measured, how in (("limit", limits, "one image at a time, other cores idle"),
                               ("limit_loaded", loaded, "every core running the loop at once")):
        results[key], costs = sorted(measured, key=lambda lc: lc[0])[(len(measured) - 1) // 2]  # median_low
        per_run = " (median of " + " / ".join(f"{lim:.1f}" for lim, _ in measured) + ")" if repeat > 1 else ""
        rows.append([key, f"{cpus} cores / ({costs['preprocess'] * 1e3:.1f} + {costs['inference'] * 1e3:.1f} + "
                          f"{costs['postprocess'] * 1e3:.1f} ms), {how}{per_run}", results[key]])
    ratios = [r / lim for r, (lim, _) in zip(rates, limits)]
    loaded_ratios = [r / lim for r, (lim, _) in zip(rates, loaded)]
    print(f"pipeline: {model.name}, {images} images ({data_root.name} repeated), {cpus} CPUs")
    print(format_table(["mode", "setting", "img/s"], rows))
    r = results
    print(f"rayinfer / limit = {r['rayinfer'] / r['limit']:.2f} (run by run, each against its own limit: "
          f"{' / '.join(f'{x:.2f}' for x in ratios)}); / limit_loaded = {r['rayinfer'] / r['limit_loaded']:.2f} "
          f"({' / '.join(f'{x:.2f}' for x in loaded_ratios)}); / sync = {r['rayinfer'] / r['sync']:.2f}; "
          f"/ raydata_best = {r['rayinfer'] / r['raydata_best']:.2f}; / raydata_default = {r['rayinfer'] / r['raydata_default']:.2f}")
    return {k: round(v, 2) for k, v in results.items()}


# -- simulated accelerator ------------------------------------------------------------------
class SimDeviceUDF:
    """Ray Data stage owning one simulated device: batch-1 requests, one after another."""

    def __init__(self, latency_ms: float, capacity: int) -> None:
        from rayinfer.actors.simulated import SimulatedModel

        self.device = SimulatedModel(latency_ms, capacity)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for image in batch["image"]:
            self.device.run({"images": image[None]})
        return {"done": np.ones(len(batch["image"]), np.int8)}


def _accel_adapter(category_ids: Sequence[int] = ()) -> Any:
    """The YOLOv8 adapter (640x640 input) whose preprocessing every accel mode runs."""
    from rayinfer.actors.yolo import DetectionOptions, YoloAdapter

    spec = [TensorSpec("images", (1, 3, 640, 640), np.dtype(np.float32))]
    return YoloAdapter("yolov8", spec, DetectionOptions(), category_ids)


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


# -- scale ------------------------------------------------------------------------------------
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


# -- memory -----------------------------------------------------------------------------------
#: Runs the CLI, then prints its own peak RSS: the driver's peak, evaluation and report included.
_MEASURED_RUN = (
    "import json, resource, sys\n"
    "from jobs.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print(json.dumps({'exit': code, 'maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n"
)


def _size_name(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def run_memory_bench(data_root: Path, model: Path, sizes: Sequence[int]) -> dict[str, float]:
    import shutil
    import subprocess
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="rayinfer-memory-"))
    rows, results = [], {}
    try:
        for n in sizes:
            root = repeat_coco(data_root, n, work / f"coco{n}")
            out = work / f"out{n}"
            cmd = [sys.executable, "-c", _MEASURED_RUN, "run", "coco", "--data-root", str(root), "--model", str(model),
                   "--output", str(out), "--quiet", "--no-progress"]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                raise RuntimeError(f"the {n}-image job failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
            measured = json.loads(proc.stdout.strip().splitlines()[-1])
            run = json.loads((out / "run.json").read_text())
            driver = round(measured["maxrss_kb"] / 1024, 1)
            actor = run["memory"]["actor_peak_rss_mb"]
            detections = json.loads((out / "metrics.json").read_text())["detections"]
            rows.append([n, run["counts"]["predictions"], detections, driver, actor, f"{wall:.0f}"])
            results[f"driver_mb_{_size_name(n)}"] = driver
            results[f"actor_mb_{_size_name(n)}"] = actor
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = _size_name(sizes[0]), _size_name(sizes[-1])
    results["driver_growth"] = round(results[f"driver_mb_{large}"] / results[f"driver_mb_{small}"] - 1, 4)
    results["actor_growth"] = round(results[f"actor_mb_{large}"] / results[f"actor_mb_{small}"] - 1, 4)
    print(f"memory: {model.name}, {data_root.name} repeated, whole job (evaluation, exports, report)")
    print(format_table(["images", "prediction rows", "detections", "driver peak RSS MB", "actor peak RSS MB", "wall s"],
                       rows))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rayinfer.jobs.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    rt = sub.add_parser("runtime", help="request queue vs one-at-a-time, no Ray")
    rt.add_argument("--model", type=Path, required=True)
    rt.add_argument("--seconds", type=float, default=5.0)
    rt.add_argument("--providers", default="cpu", help="comma-separated, e.g. cuda,cpu")
    pl = sub.add_parser("pipeline", help="the whole job vs a naive loop and Ray Data")
    pl.add_argument("--data-root", type=Path, required=True)
    pl.add_argument("--model", type=Path, required=True)
    pl.add_argument("--images", type=int, default=240)
    pl.add_argument("--quick", action="store_true", help="Ray Data grid at batch 4 only")
    pl.add_argument("--repeat", type=int, default=3,
                    help="rayinfer runs, each between two measurements of the limits; medians are reported")
    ac = sub.add_parser("accel", help="simulated devices: Ray Data vs rayinfer")
    ac.add_argument("--data-root", type=Path, required=True)
    ac.add_argument("--images", type=int, default=5000,
                    help="default: the size of COCO val2017, so actor start-up is amortised as in a real job")
    ac.add_argument("--devices", type=int, default=2)
    ac.add_argument("--latency-ms", type=float, default=20.0)
    ac.add_argument("--capacity", type=int, default=4)
    sc = sub.add_parser("scale", help="1..N simulated devices, trivial host work")
    sc.add_argument("--max-devices", type=int, default=64)
    sc.add_argument("--latency-ms", type=float, default=200.0)
    sc.add_argument("--capacity", type=int, default=4)
    sc.add_argument("--seconds", type=float, default=12.0, help="target run length per device count")
    sc.add_argument("--memory-sizes", default="1000,20000")
    me = sub.add_parser("memory", help="peak RSS of the whole COCO job at two dataset sizes")
    me.add_argument("--data-root", type=Path, required=True)
    me.add_argument("--model", type=Path, required=True)
    me.add_argument("--sizes", default="1000,5000", help="comma-separated image counts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("ray", "rayinfer.jobs.driver", "rayinfer.jobs.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    if args.bench == "runtime":
        result = run_runtime_bench(args.model, args.seconds, args.providers.split(","))
    elif args.bench == "pipeline":
        result = run_pipeline_bench(args.data_root, args.model, args.images, grid=not args.quick,
                                    repeat=max(1, args.repeat))
    elif args.bench == "accel":
        result = run_accel_bench(args.data_root, args.images, args.devices, args.latency_ms, args.capacity)
    elif args.bench == "memory":
        result = run_memory_bench(args.data_root, args.model, [int(v) for v in args.sizes.split(",")])
    else:
        a, b = (int(v) for v in args.memory_sizes.split(","))
        result = run_scale_bench(args.max_devices, args.latency_ms, args.capacity, args.seconds, (a, b))
    print(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

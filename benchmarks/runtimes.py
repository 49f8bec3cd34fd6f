"""`runtimes`: the whole job with each runtime (onnxruntime, openvino, auto), back to back.

The dataset (COCO or NYU layout) is repeated to `images` samples (links, new ids), and
each runtime's job runs `repeat` times in turn (a shared machine's speed drifts minute to
minute: medians of interleaved runs). End to end is samples / (actor start + inference),
so auto's probe counts against it (the first auto run measures; the next ones find the
cache); steady is the inference phase alone. `limit_loaded` per runtime: cores / the
per-sample cost of read + preprocess + inference + postprocess (COCO: decode, letterbox,
decode + NMS; NYU: HDF5 read, transforms, the per-image metrics) with every core running
that loop at once (the pipeline bench's), the most any schedule can get with that runtime.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from rayinfer.actors.model import available_cpus
from benchmarks.common import _rayinfer, repeat_coco, start_ray
from rayinfer.jobs.format import format_table

log = logging.getLogger(__name__)

RUNTIMES = ("onnxruntime", "openvino", "auto")


def repeat_nyu(src: Path, n: int, dest: Path) -> Path:
    """An NYU-layout folder of `n` frames: the source .h5 files repeated (links) under new names."""
    frames = sorted((src / "val" / "official").glob("*.h5"))
    out = dest / "val" / "official"
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        link = out / f"{i:05d}_{frames[i % len(frames)].name}"
        if not link.exists():
            link.symlink_to(frames[i % len(frames)].resolve())
    return dest


def limit_loaded(task: str, data_root: Path, model: Path, cpus: int, runtime: str) -> float:
    """cores / the per-sample cost of read + preprocess + inference + postprocess with every
    core running that loop at once (the pipeline bench's), with `runtime`."""
    from benchmarks.pipeline import _per_image_costs

    return cpus / sum(_per_image_costs(data_root, model, threads=cpus, runtime=runtime, task=task).values())


#: per dataset: how to repeat it to N samples
BENCH_SETS: dict[str, Any] = {"coco": repeat_coco, "nyu": repeat_nyu}


def run_runtimes_bench(task: str, data_root: Path, model: Path, images: int, repeat: int = 2) -> dict[str, Any]:
    cpus = available_cpus()
    work = Path(tempfile.mkdtemp(prefix="rayinfer-runtimes-"))
    repeat_set = BENCH_SETS[task]
    root = repeat_set(data_root, images, work / task)
    cache = work / "probe-cache"  # a fresh probe cache: the first auto run measures, as a first job would
    os.environ["RAYINFER_CACHE_DIR"] = str(cache)
    start_ray(cpus)
    end_to_end: dict[str, list[float]] = {r: [] for r in RUNTIMES}
    steady: dict[str, list[float]] = {r: [] for r in RUNTIMES}
    chosen = ""
    for _ in range(repeat):
        for runtime in RUNTIMES:
            rate, run = _rayinfer(dict(task=task, data_root=str(root), model=str(model), runtime=runtime,
                                       output=str(work / f"out-{runtime}")))
            end_to_end[runtime].append(rate)
            steady[runtime].append(run["throughput"]["samples_per_s"])
            if runtime == "auto":
                chosen = run["runtime"]["name"]
            log.info("%s: %.1f img/s end to end, %.1f steady", runtime, rate, steady[runtime][-1])
    result: dict[str, Any] = {r: round(statistics.median_low(v), 2) for r, v in end_to_end.items()}
    result.update({f"{r}_steady": round(statistics.median_low(v), 2) for r, v in steady.items()})
    result["auto_chose"] = chosen
    rows = [[r, " / ".join(f"{x:.1f}" for x in end_to_end[r]), result[r], result[f"{r}_steady"]] for r in RUNTIMES]
    for runtime in ("onnxruntime", "openvino"):
        result[f"limit_loaded_{runtime}"] = round(limit_loaded(task, data_root, model, cpus, runtime), 2)
        rows.append([f"limit_loaded ({runtime})", "-", result[f"limit_loaded_{runtime}"], "-"])
    print(f"runtimes: {task}, {model.name}, {images} samples ({data_root.name} repeated), {cpus} CPUs; auto chose {chosen}")
    print(format_table(["runtime", "runs, end to end", "img/s (median)", "steady"], rows))
    print(f"auto / onnxruntime = {result['auto'] / result['onnxruntime']:.2f}x end to end "
          f"({result['auto_steady'] / result['onnxruntime_steady']:.2f}x steady); auto / better single runtime = "
          f"{result['auto'] / max(result['onnxruntime'], result['openvino']):.2f}x")
    best = max(result["limit_loaded_onnxruntime"], result["limit_loaded_openvino"])
    print(f"auto / limit_loaded of the fastest runtime = {result['auto'] / best:.2f}x end to end "
          f"({result['auto_steady'] / best:.2f}x steady)")
    return result

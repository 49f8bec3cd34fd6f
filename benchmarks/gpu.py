"""`gpu`: the prepared check for a machine with a real GPU: a dynamic-batch model (YOLOv8n,
`yolov8n_fp32_dynbatch.onnx`) through the whole COCO job at each batch size on ONNX
Runtime's CUDA provider.

For each `--batch` value (default 1, 8, 32, auto):
- AP / AP50 of the job on the COCO set as it is (the mini: the reference figures);
- img/s of the job in steady state on the set repeated to `--images`;
- the model alone at that batch (random inputs, the actor's request count, `--seconds`):
  img/s and p50 latency per request, the device's side of the bound;
- host cores per GPU: the actor's CPU per image (every thread of its process: read, decode,
  letterbox, NMS, rows, Ray) times the model-alone rate: the cores a node needs per GPU to
  keep it at that rate.

`--providers cpu` runs the same script on a machine without a GPU (what checks the script
itself); its figures say nothing about GPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import _bench_set, _rayinfer, start_ray
from rayinfer.actors.model import available_cpus
from rayinfer.jobs.format import format_table


def run_gpu_bench(data_root: Path, model: Path, images: int, batches: list[str], providers: tuple[str, ...],
                  seconds: float) -> dict[str, Any]:
    from rayinfer.actors.backends import backend, build
    from rayinfer.actors.batching import resolve_batch
    from rayinfer.jobs.benchmark import measure
    from rayinfer.jobs.config import JobConfig

    cpus = available_cpus()
    work, root, _, _, _ = _bench_set(data_root, images, "rayinfer-gpu-")
    base = dict(task="coco", model=str(model), runtime="onnxruntime",
                runtime_options={"onnxruntime": {"providers": providers}})
    start_ray(cpus)
    rows, results = [], []
    for batch in batches:
        _rayinfer(dict(base, data_root=str(data_root), output=str(work / f"mini-{batch}"), batch=batch))
        _, big = _rayinfer(dict(base, data_root=str(root), output=str(work / f"big-{batch}"), batch=batch))
        actor = big["actors"][0]
        cfg = JobConfig(**dict(base, data_root=".", output="."), batch=batch)
        instance, plan = build(backend("onnxruntime"), cfg, actor["cpus"])
        size, _ = resolve_batch(cfg, instance, plan.requests, actor["cpus"])
        alone = measure(instance, plan.requests, "throughput", actor["cpus"], seconds, size)
        metrics = _metrics(work / f"mini-{batch}")
        cores = actor["host_ms_per_sample"] * alone["img_s"] / 1000 if actor.get("host_ms_per_sample") else None
        results.append({"batch": batch, "batch_run": actor["batch"], "batch_fill": actor.get("batch_fill"),
                        "device": actor["device"], "providers": actor["providers"],
                        "ap": round(metrics["AP"], 4), "ap50": round(metrics["AP50"], 4), "img_s": big["throughput"]["samples_per_s"],
                        "model_img_s": alone["img_s"], "model_p50_ms": alone["latency_ms"]["p50"],
                        "host_ms_per_image": actor.get("host_ms_per_sample"),
                        "host_cores_per_gpu": None if cores is None else round(cores, 2)})
        r = results[-1]
        rows.append([batch, r["batch_run"], r["device"], f"{r['ap']:.4f}", f"{r['ap50']:.4f}", r["img_s"],
                     r["model_img_s"], r["model_p50_ms"], r["host_ms_per_image"],
                     "-" if cores is None else f"{cores:.1f}"])
    print(f"gpu: {model.name} with providers {','.join(providers)}, {cpus} CPUs; job img/s on {images} images, "
          f"AP on {data_root}")
    print(format_table(["--batch", "ran at", "device", "AP", "AP50", "job img/s", "model img/s", "model p50 ms",
                        "host ms/img", "host cores per GPU"], rows))
    return {"providers": list(providers), "cpus": cpus, "runs": results}


def _metrics(out: Path) -> dict[str, float]:
    import json

    return json.loads((out / "metrics.json").read_text())

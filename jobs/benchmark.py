"""`rayinfer bench`: a model on each installed runtime (what OpenVINO's benchmark_app and
Ultralytics' benchmark mode give).

Without a dataset, for each runtime x requests (1, 2, 4, auto = the runtime's optimal
count), one sample per request, then x batches at the optimal count (default: 8, 32 and
auto where the model's batch axis is dynamic; auto = what a job would pick: 1 on a CPU):
the model built as an actor would build it with this process's CPUs, fed random inputs of
its shape, every request kept busy for `seconds` after a warm-up; img/s (samples), and each
request's latency inside the runtime (min / p50 / p90 / p99 / max, ms). A batch the model's
batch axis cannot take is named, with why, and left out.

With `--data-root`, speed and accuracy side by side, one row per runtime x precision it
can compute in (`model`, `bf16`, `fp16`; a precision no runtime here computes in is named,
with why, and left out): img/s and p50 / p99 latency as above at the runtime's optimal
request count, and the task's headline metrics from a whole job on the first `images`
samples, each with its difference from the first `model`-precision row (the model's own
figures). The task is the one whose layout the data root has, or `--task`.

    rayinfer bench --model ../shared/models/yolov8n_fp32.onnx
    rayinfer bench --model yolov8n.onnx --requests 1,auto --json
    rayinfer bench --model ../shared/models/yolov8n_fp32_dynbatch.onnx --providers cuda --batch 1,8,32,auto
    rayinfer bench --model yolov8n.onnx --data-root ../shared/data/coco-val2017-mini --images 79
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Sequence
from typing import Any

from rayinfer.actors.backends import backend, build, candidates
from rayinfer.actors.backends.choice import example_inputs, saturate
from rayinfer.actors.batching import BatchedModel, batch_axis, resolve_batch
from rayinfer.actors.model import PRECISIONS, available_cpus
from rayinfer.actors.queue import AsyncInferQueue, queue_for
from rayinfer.datasets.base import SetupError
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.driver import percentiles
from rayinfer.jobs.format import format_table

log = logging.getLogger(__name__)

QUANTILES = {"min": 0, "p50": 50, "p90": 90, "p99": 99, "max": 100}


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """min / p50 / p90 / p99 / max of `latencies_ms` (None each when there are none)."""
    return percentiles(latencies_ms, QUANTILES)


def measure(model: Any, requests: int, hint: str, cpus: int, seconds: float, batch: int = 1) -> dict[str, Any]:
    """Keep `requests` busy on `model` for `seconds`, `batch` samples each: samples/s and
    per-request latency."""
    if batch > 1:
        queue = AsyncInferQueue(BatchedModel(model, batch), jobs=requests, hint=hint, cpus=cpus)
        feed: Any = [example_inputs(model)] * batch
    else:
        queue = queue_for(model, requests, hint, cpus)
        feed = example_inputs(model)
    try:
        saturate(queue, feed, 0.0, at_least=2 * len(queue))  # warm-up
        elapsed, latencies = saturate(queue, feed, seconds)
    finally:
        queue.close()
    return {"requests": len(queue), "batch": batch, "img_s": round(batch * len(latencies) / elapsed, 2),
            "latency_ms": latency_summary(latencies)}


def run_model_bench(model: str, runtimes: Sequence[str] = ("auto",), requests: Sequence[str] = ("1", "2", "4", "auto"),
                    seconds: float = 5.0, hint: str = "throughput",
                    batches: Sequence[str] | None = None, providers: Sequence[str] | None = None) -> dict[str, Any]:
    """The JSON object `rayinfer bench --json` prints without a dataset (see the module docstring)."""
    cfg = JobConfig(task="null", data_root=".", model=model, output=".", hint=hint,
                    runtime_options=_providers(providers))
    cpus = available_cpus()
    runs, skipped = [], []
    for name in _runtime_names(model, runtimes):
        for count in requests:
            run_cfg = dataclasses.replace(cfg, runtime=name, requests=0 if count == "auto" else int(count), batch="1")
            log.info("%s, %s requests: measuring for %.0f s", name, count, seconds)
            runs.append({"runtime": name, "requested": count, **_speed(run_cfg, cpus, seconds)})
        for size in batches if batches is not None else _default_batches(run_cfg, cpus):
            run_cfg = dataclasses.replace(cfg, runtime=name, batch=size)
            log.info("%s, batch %s: measuring for %.0f s", name, size, seconds)
            try:
                runs.append({"runtime": name, "requested": "auto", **_speed(run_cfg, cpus, seconds)})
            except SetupError as exc:  # a batch the model's batch axis cannot take
                skipped.append({"runtime": name, "batch": size, "why": str(exc)})
    return {"model": model, "cpus": cpus, "hint": hint, "seconds": seconds, "runs": runs, "skipped": skipped}


def _default_batches(cfg: JobConfig, cpus: int) -> list[str]:
    """8, 32 and auto where the model's batch axis is dynamic; none where it is fixed."""
    instance, _ = build(backend(cfg.runtime), cfg, cpus)
    return ["8", "32", "auto"] if batch_axis(instance) is None else []


def run_accuracy_bench(model: str, data_root: str, task: str | None = None, images: int | None = None,
                       runtimes: Sequence[str] = ("auto",), precisions: Sequence[str] = PRECISIONS,
                       seconds: float = 5.0, hint: str = "throughput",
                       providers: Sequence[str] | None = None) -> dict[str, Any]:
    """Speed and accuracy per runtime x precision on `data_root`'s first `images` samples:
    {"task", "model", "images", "cpus", "rows": [{runtime, precision, img_s, p50_ms, p99_ms,
    requests, metrics, delta}], "skipped": [{runtime, precision, why}]}."""
    import ray

    from rayinfer.jobs.cluster import init_local_ray
    from rayinfer.jobs.tasks import task_of

    task = task or task_of(data_root)
    cfg = JobConfig(task=task, data_root=data_root, model=model, output=".", hint=hint, limit=images,
                    runtime_options=_providers(providers))
    cpus = available_cpus()
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    started = not ray.is_initialized()
    if started:  # one Ray for every row's job
        init_local_ray(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False, namespace="rayinfer")
    try:
        for name in _runtime_names(model, runtimes):
            for precision in precisions:
                run_cfg = dataclasses.replace(cfg, runtime=name, precision=precision)
                why = backend(name).check_precision(run_cfg)
                if why and precision != "model":
                    skipped.append({"runtime": name, "precision": precision, "why": why})
                    continue
                log.info("%s, precision %s: measuring for %.0f s, then a job on %s samples", name, precision, seconds,
                         images or "all")
                speed = _speed(run_cfg, cpus, seconds)
                rows.append({"runtime": name, "precision": precision, "img_s": speed["img_s"],
                             "p50_ms": speed["latency_ms"]["p50"], "p99_ms": speed["latency_ms"]["p99"],
                             "requests": speed["requests"], "metrics": _accuracy(run_cfg),
                             **({"differs_from_model": why} if why else {})})
    finally:
        if started:
            ray.shutdown()
    reference = next((r for r in rows if r["precision"] == "model" and "differs_from_model" not in r), None)
    for r in rows:
        r["delta"] = {k: round(v - reference["metrics"][k], 4) for k, v in r["metrics"].items()} if reference else None
    return {"task": task, "model": model, "data_root": data_root, "images": images, "cpus": cpus, "hint": hint,
            "seconds": seconds, "rows": rows, "skipped": skipped}


def _providers(providers: Sequence[str] | None) -> dict[str, Any]:
    """`--providers` as the configuration's ONNX Runtime options (nothing when not given)."""
    return {"onnxruntime": {"providers": tuple(providers)}} if providers else {}


def _runtime_names(model: str, runtimes: Sequence[str]) -> list[str]:
    names: list[str] = []
    for runtime in runtimes:
        names += [b.name for b in candidates(model, runtime) if b.name not in names]
    return names


def _speed(cfg: JobConfig, cpus: int, seconds: float) -> dict[str, Any]:
    instance, plan = build(backend(cfg.runtime), cfg, cpus)
    try:
        batch, _ = resolve_batch(cfg, instance, plan.requests, cpus)
        return measure(instance, plan.requests, cfg.hint, cpus, seconds, batch)
    finally:
        del instance


def _accuracy(cfg: JobConfig) -> dict[str, float]:
    """The task's headline metrics from a whole job on `cfg.data_root`, in a folder of ours."""
    from rayinfer.jobs.driver import run_job
    from rayinfer.jobs.tasks import get_task

    with tempfile.TemporaryDirectory(prefix="rayinfer-bench-") as out:
        outcome = run_job(dataclasses.replace(cfg, output=out, report=False, progress=False, quiet=True))
    if outcome.exit_code:
        raise SetupError(f"the {cfg.runtime} / {cfg.precision} job on {cfg.data_root} ended with exit code "
                         f"{outcome.exit_code}")
    task = get_task(cfg.task)
    keys = list(task.headline_keys or task.summary_keys) or [k for k, v in outcome.metrics.items() if isinstance(v, float)]
    return {k: round(float(outcome.metrics[k]), 4) for k in keys if k in outcome.metrics}


def format_bench(result: dict[str, Any]) -> str:
    rows = [[r["runtime"], r["requested"], r["requests"], r.get("batch", 1), f"{r['img_s']:.1f}",
             *(f"{r['latency_ms'][k]:.1f}" for k in QUANTILES)] for r in result["runs"]]
    lines = [f"model {result['model']}, {result['cpus']} CPUs, hint {result['hint']}, "
             f"{result['seconds']:g} s per run (latency: inside the runtime, per request)",
             format_table(["runtime", "asked", "in flight", "batch", "img/s", *(f"{k} ms" for k in QUANTILES)], rows)]
    lines += [f"not run: {s['runtime']} at batch {s['batch']}: {s['why']}" for s in result.get("skipped", [])]
    return "\n".join(lines)


def format_accuracy_bench(result: dict[str, Any]) -> str:
    """The runtime x precision table, the rows left out and why, then the rows as JSON (the last line)."""
    keys = list(result["rows"][0]["metrics"]) if result["rows"] else []
    table = [[r["runtime"], r["precision"] + (" *" if "differs_from_model" in r else ""), f"{r['img_s']:.1f}",
              f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
              *(f"{r['metrics'][k]:.4f}" for k in keys),
              *(f"{r['delta'][k]:+.4f}" if r["delta"] else "-" for k in keys)] for r in result["rows"]]
    lines = [f"{result['task']} on {result['data_root']} ({result['images'] or 'all'} samples), model "
             f"{result['model']}, {result['cpus']} CPUs; img/s and latency: the model alone, random inputs, "
             f"{result['seconds']:g} s per row; metrics: a whole job; delta: against the first row at the model's "
             "own precision",
             format_table(["runtime", "precision", "img/s", "p50 ms", "p99 ms", *keys, *(f"d {k}" for k in keys)],
                          table)]
    lines += [f"* {r['runtime']}: {r['differs_from_model']}" for r in result["rows"] if "differs_from_model" in r]
    lines += [f"not run: {s['runtime']} at {s['precision']}: {s['why']}" for s in result["skipped"]]
    lines.append(json.dumps(result["rows"]))
    return "\n".join(lines)

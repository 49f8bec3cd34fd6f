"""`rayinfer bench`: a model on each installed runtime, at several request counts (what
OpenVINO's benchmark_app and Ultralytics' benchmark mode give).

For each runtime x requests (1, 2, 4, auto = the runtime's optimal count): the model
built as an actor would build it with this process's CPUs, fed random inputs of its
shape, every request kept busy for `seconds` after a warm-up; img/s, and each request's
latency inside the runtime (min / p50 / p90 / p99 / max, ms). Optionally the dataset
accuracy per runtime (`--task` and `--data-root`: the whole job, in a temporary folder).

    rayinfer bench --model ../shared/models/yolov8n_fp32.onnx
    rayinfer bench --model yolov8n.onnx --requests 1,auto --json
    rayinfer bench --model yolov8n.onnx --task coco --data-root ../shared/data/coco-val2017-mini
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from typing import Any

from rayinfer.actors.backends import backend, build, candidates
from rayinfer.actors.backends.choice import example_inputs, saturate
from rayinfer.actors.model import available_cpus
from rayinfer.actors.queue import queue_for
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.driver import percentiles
from rayinfer.jobs.format import format_table

log = logging.getLogger(__name__)

QUANTILES = {"min": 0, "p50": 50, "p90": 90, "p99": 99, "max": 100}


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """min / p50 / p90 / p99 / max of `latencies_ms` (None each when there are none)."""
    return percentiles(latencies_ms, QUANTILES)


def measure(model: Any, requests: int, hint: str, cpus: int, seconds: float) -> dict[str, Any]:
    """Keep `requests` busy on `model` for `seconds`: img/s and per-request latency."""
    queue = queue_for(model, requests, hint, cpus)
    feed = example_inputs(model)
    try:
        saturate(queue, feed, 0.0, at_least=2 * queue.jobs)  # warm-up
        elapsed, latencies = saturate(queue, feed, seconds)
    finally:
        queue.close()
    return {"requests": queue.jobs, "img_s": round(len(latencies) / elapsed, 2),
            "latency_ms": latency_summary(latencies)}


def run_model_bench(model: str, runtimes: Sequence[str] = ("auto",), requests: Sequence[str] = ("1", "2", "4", "auto"),
                    seconds: float = 5.0, hint: str = "throughput", task: str | None = None,
                    data_root: str | None = None) -> dict[str, Any]:
    """The JSON object `rayinfer bench --json` prints (see the module docstring)."""
    cfg = JobConfig(task=task or "null", data_root=data_root or ".", model=model, output=".", hint=hint)
    names: list[str] = []
    for runtime in runtimes:
        names += [b.name for b in candidates(model, runtime) if b.name not in names]
    cpus = available_cpus()
    runs = []
    for name in names:
        for count in requests:
            n = 0 if count == "auto" else int(count)
            run_cfg = dataclasses.replace(cfg, runtime=name, requests=n)
            instance, plan = build(backend(name), run_cfg, cpus)
            log.info("%s, %s requests: measuring for %.0f s", name, count, seconds)
            result = measure(instance, plan.requests, hint, cpus, seconds)
            runs.append({"runtime": name, "requested": count, **result})
            del instance
    accuracy = None
    if task and data_root:
        accuracy = {name: _accuracy(dataclasses.replace(cfg, task=task, data_root=data_root, runtime=name))
                    for name in names}
    return {"model": model, "cpus": cpus, "hint": hint, "seconds": seconds, "runs": runs, "accuracy": accuracy}


def _accuracy(cfg: JobConfig) -> dict[str, Any]:
    """The task's summary metrics from a whole job on `cfg.data_root`, in a folder of ours."""
    from rayinfer.jobs.driver import run_job
    from rayinfer.jobs.tasks import get_task

    with tempfile.TemporaryDirectory(prefix="rayinfer-bench-") as out:
        outcome = run_job(dataclasses.replace(cfg, output=out, report=False, progress=False, quiet=True))
    keys = list(get_task(cfg.task).summary_keys) or [k for k, v in outcome.metrics.items() if isinstance(v, float)]
    return {k: outcome.metrics[k] for k in keys if k in outcome.metrics}


def format_bench(result: dict[str, Any]) -> str:
    rows = [[r["runtime"], r["requested"], r["requests"], f"{r['img_s']:.1f}",
             *(f"{r['latency_ms'][k]:.1f}" for k in QUANTILES)] for r in result["runs"]]
    text = [f"model {result['model']}, {result['cpus']} CPUs, hint {result['hint']}, "
            f"{result['seconds']:g} s per run (latency: inside the runtime, per request)",
            format_table(["runtime", "asked", "in flight", "img/s", *(f"{k} ms" for k in QUANTILES)], rows)]
    if result.get("accuracy"):
        keys = list(next(iter(result["accuracy"].values())))
        text.append(format_table(["runtime", *keys], [[name, *(f"{m.get(k, float('nan')):.4f}" for k in keys)]
                                                      for name, m in result["accuracy"].items()]))
    return "\n".join(text)

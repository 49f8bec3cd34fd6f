"""`runtime`: one model, no Ray: one request at a time vs the request queue."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rayinfer.actors.backends.choice import saturate
from rayinfer.actors.backends.onnxruntime import OnnxModel, RuntimeOptions
from rayinfer.actors.model import available_cpus
from rayinfer.actors.queue import AsyncInferQueue
from rayinfer.jobs.format import format_table


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


def bench_queue(path: Path, requests: int, seconds: float, options: RuntimeOptions) -> tuple[float, int, int]:
    """Keep every request busy for `seconds`; returns (img/s, requests, threads per request)."""
    q = AsyncInferQueue(path, jobs=requests, options=options)
    feed = _dummy_feed(q.model)  # type: ignore[arg-type]
    try:
        saturate(q, feed, 0.0, at_least=2 * len(q))  # warm-up
        elapsed, latencies = saturate(q, feed, seconds)
    finally:
        q.close()
    return len(latencies) / elapsed, len(q), q.model.intra_op_threads  # type: ignore[attr-defined]


def run_runtime_bench(model: Path, seconds: float, providers: Sequence[str]) -> dict[str, float]:
    cpus = available_cpus()
    options = RuntimeOptions(providers=tuple(providers))
    rows: list[list[object]] = []
    results: dict[str, float] = {}

    results["sync"] = bench_sync(model, seconds)
    rows.append(["sync", 1, "default", results["sync"]])
    for count in (1, 2, 4):
        rate, n, threads = bench_queue(model, count, seconds, options)
        results[f"requests{count}"] = rate
        rows.append([f"requests{count}", n, threads, rate])
    rate, n, threads = bench_queue(model, 0, seconds, options)
    results["auto"] = rate
    rows.append([f"auto (jobs=0 -> {n})", n, threads, rate])
    single = bench_single_thread(model, seconds)
    results["limit"] = cpus * single
    rows.append([f"limit ({cpus} cores x 1-thread {single:.1f})", "-", 1, results["limit"]])

    print(f"model {model.name}, {cpus} CPUs, providers {list(providers)}, {seconds:.0f}s per mode")
    print(format_table(["mode", "requests", "threads/request", "img/s"], rows))
    best = max(results["requests1"], results["requests2"], results["requests4"])
    print(f"auto / sync = {results['auto'] / results['sync']:.2f}x; auto / best fixed = {results['auto'] / best:.2f}x")
    return {k: round(v, 2) for k, v in results.items()}

"""Benchmarks that print figures (never timed asserts).

`python -m jobs.bench runtime --model M [--seconds S]`
    One model, no Ray: one-at-a-time against the request queue with 1, 2, 4 and
    the automatic number of requests. Last line: a JSON object of img/s.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from actors.model import OnnxModel, RuntimeOptions, available_cpus
from actors.queue import AsyncInferQueue

log = logging.getLogger("jobs.bench")


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain fixed-width table."""
    cells = [list(map(str, header))] + [[f"{c:.1f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    rt = sub.add_parser("runtime", help="request queue vs one-at-a-time, no Ray")
    rt.add_argument("--model", type=Path, required=True)
    rt.add_argument("--seconds", type=float, default=5.0)
    rt.add_argument("--providers", default="cpu", help="comma-separated, e.g. cuda,cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if args.bench == "runtime":
        result = run_runtime_bench(args.model, args.seconds, args.providers.split(","))
    print(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`--runtime auto`: measuring the installed runtimes on a model, and remembering the result.

No runtime wins everywhere (OpenVINO runs some models faster than ONNX Runtime and others,
such as a dynamic-int8 YOLOv8n, slower: docs/performance.md), so the choice is measured.
Every candidate computes at the precision the job asks for (`--precision`, the model's own
by default), so the race is between runtimes, never between precisions:

1. each candidate is built as the actor would run it (its request plan, its own queue);
2. it is fed random inputs of the model's shape, keeping every planned request busy: a
   warm-up of one round of requests, then rounds of `ROUND_S` seconds or `ROUND_REQUESTS`
   requests each, whichever ends first (a 3,600 img/s model needs 18 ms for a round's
   figure, not 0.25 s), alternating between candidates so a noisy neighbour slows each alike;
3. img/s is completions over the round's wall time, the best of its rounds; the faster wins.
   The probe ends as soon as the leader is `DECISIVE` times the next (a clear race: one
   round each, at most 0.5 s for two candidates), else after `MAX_ROUNDS` rounds each (at
   most 2 s): a close race is where a longer look pays, and where a wrong pick costs least.

The probe runs before the job's first sample, so every second of it is a second of the
job (on a 500-frame NYU job, 3 s of probing was 40% of the run). The figures and the
choice are cached in `runtime-probes.json` under `$RAYINFER_CACHE_DIR` (else
`$XDG_CACHE_HOME/rayinfer`, else `~/.cache/rayinfer`), keyed by the model file's sha256,
the CPU model, the actor's CPUs, the hint, the request count and every candidate's
version: a second job on the same hardware does not probe again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from rayinfer.actors.fetch import cache_dir
from rayinfer.actors.settings import ActorSettings
from rayinfer.actors.model import Model

log = logging.getLogger(__name__)

#: seconds each candidate keeps its requests busy in one round, or requests, if fewer
ROUND_S = 0.25
ROUND_REQUESTS = 64
#: rounds each at the most (a close race)
MAX_ROUNDS = 4
#: a lead (fastest / next) that ends the probe after any round
DECISIVE = 1.25
CACHE_FILE = "runtime-probes.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cached(key: str) -> dict[str, Any] | None:
    """The probe remembered under `key`: {"choice", "probe", ...}, or None."""
    entry = entries().get(key)
    return entry if isinstance(entry, dict) and "choice" in entry and "probe" in entry else None


def remember(key: str, winner: str, rates: dict[str, float], cpus: int) -> None:
    store(key, {"choice": winner, "probe": rates, "cpu": cpu_model(), "cpus": cpus,
                "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})


def measure(models: dict[str, tuple[Model, int]], hint: str, cpus: int, max_rounds: int = MAX_ROUNDS,
            round_s: float = ROUND_S, decisive: float = DECISIVE) -> dict[str, float]:
    """img/s of each model, `requests` in flight on its own queue, rounds alternating
    until one leads by `decisive` or each had `max_rounds`."""
    from rayinfer.actors.queue import queue_for

    best = dict.fromkeys(models, 0.0)
    queues = {name: queue_for(model, requests, hint, cpus) for name, (model, requests) in models.items()}
    try:
        feeds = {name: example_inputs(model) for name, (model, _) in models.items()}
        for name, q in queues.items():  # warm-up: one round of requests each
            _run(q, feeds[name], seconds=0.0)
        for rounds in range(1, max_rounds + 1):
            for name, q in queues.items():
                best[name] = max(best[name], _run(q, feeds[name], round_s))
            if lead(best) >= decisive:
                break
    finally:
        for q in queues.values():
            q.close()
    log.debug("probe: %d round(s) of %.2f s each: %s", rounds, round_s, best)
    return {name: round(rate, 2) for name, rate in best.items()}


def lead(rates: dict[str, float]) -> float:
    """The fastest rate over the next one (inf with one candidate or a zero rate)."""
    top = sorted(rates.values(), reverse=True)
    return top[0] / top[1] if len(top) > 1 and top[1] > 0 else float("inf")


def _run(queue: Any, feed: dict[str, np.ndarray], seconds: float) -> float:
    """Keep `queue` full for `seconds` or ROUND_REQUESTS requests (at least one request
    per slot); img/s."""
    elapsed, latencies = saturate(queue, feed, seconds, at_least=len(queue),
                                  at_most=max(len(queue), ROUND_REQUESTS))
    return len(latencies) / elapsed if elapsed > 0 else 0.0


def saturate(queue: Any, feed: dict[str, np.ndarray], seconds: float, at_least: int = 0,
             at_most: int | None = None) -> tuple[float, list[float]]:
    """Start requests on `queue` with `feed` (at least `at_least`) until `seconds` passed
    or `at_most` were started, then wait for all: (seconds it took, each request's latency
    in ms). A failed request raises RuntimeError, naming the first failure."""
    latencies: list[float] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def done(request: Any, _: Any) -> None:
        with lock:
            if request.error is not None:
                failures.append(request.error)
            else:
                latencies.append(request.latency)

    queue.set_callback(done)
    t0 = time.perf_counter()
    started = 0
    while started < at_least or (time.perf_counter() - t0 < seconds and (at_most is None or started < at_most)):
        queue.start_async(feed)
        started += 1
    queue.wait_all()
    elapsed = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"{len(failures)} of {started} requests failed: {failures[0]}")
    return elapsed, latencies


def example_inputs(model: Model) -> dict[str, np.ndarray]:
    """Random inputs of the model's shapes (a dynamic batch is 1, other dynamic dims 640)."""
    rng = np.random.default_rng(0)
    feed = {}
    for spec in model.inputs:
        shape = tuple(d if d is not None else (1 if i == 0 else 640) for i, d in enumerate(spec.shape))
        if np.issubdtype(spec.dtype, np.floating):
            feed[spec.name] = rng.random(shape, dtype=np.float32).astype(spec.dtype)
        else:
            feed[spec.name] = rng.integers(0, 255, shape).astype(spec.dtype)
    return feed


def cache_key(found: list[Any], cfg: ActorSettings, cpus: int) -> str:
    from rayinfer.datasets.base import sha256_file

    parts = {
        "model": sha256_file(Path(cfg.model)),
        "cpu": cpu_model(),
        "cpus": cpus,
        "hint": cfg.hint,
        "requests": cfg.requests,
        "runtimes": sorted(f"{k}={v}" for b in found for k, v in b.versions().items()),
        "precision": cfg.precision,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def entries() -> dict[str, Any]:
    """Everything cached: the runtime probes, and `--batch auto`'s (actors/batching.py)."""
    try:
        data = json.loads((cache_dir() / CACHE_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def store(key: str, entry: dict[str, Any]) -> None:
    """Add one entry (atomically: concurrent actors on one node may write at once)."""
    path = cache_dir() / CACHE_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = entries()
        data[key] = entry
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("probe not cached (%s): %s", path, exc)

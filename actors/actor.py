"""`InferenceActor`: owns exactly one runtime (one accelerator, or N CPU cores).

It receives work units (a shard: a list of sample ids and files), reads and
preprocesses them itself (so only paths travel, never float32 tensors), keeps every
request of its `AsyncInferQueue` busy, postprocesses in the request's callback, and
returns one small Arrow table per shard. A bad sample becomes an error row; it never
fails the shard.

Where a sample is prepared follows RBLN's `parallel` choice:
- on an accelerator, loader threads prepare the next inputs while the device
  computes (double buffering), so the device never waits for the host;
- on the CPU, the "device" is the same cores, so overlap gains nothing and costs
  preemption and cache misses in the middle of inference (measured: 105 vs 88 ms per
  YOLOv8n inference); each request prepares its own input instead, one pipeline
  per core.

A request carries one sample, or a batch of up to `batch` where the model's batch axis and
`--batch` allow it (on a GPU, `--batch auto` measures the batch; actors/batching.py): the
loader threads prepare samples, a `BatchingQueue` gathers them into requests, and each
sample is postprocessed on its own as before.

The class is plain Python (tests use it without Ray); the driver wraps it with
`ray.remote`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
import queue
from dataclasses import dataclass, field
from typing import Any

import cv2
import pyarrow as pa

from rayinfer.actors.backends import open_model
from rayinfer.actors.model import available_cpus
from rayinfer.actors.batching import BatchedModel, BatchingQueue, resolve_batch
from rayinfer.actors.queue import AsyncInferQueue, InferRequest, queue_for
from rayinfer.actors.settings import ActorSettings
from rayinfer.actors.rows import from_ipc, to_ipc, to_table
from rayinfer.datasets.base import ERROR_SCHEMA, ModelFamily, Dataset, Sample, SampleError, rows_schema

log = logging.getLogger(__name__)

STAGES = ("load", "preprocess", "queue", "infer", "postprocess")
#: requests one actor keeps in flight to a remote data root, fetching samples ahead of decoding
FETCH_THREADS = 16


@dataclass
class ShardResult:
    """What an actor returns for one shard: its prediction rows, per-sample errors and timings."""

    shard: int
    rows: pa.Table
    errors: pa.Table
    actor: str
    wall_s: float
    stage_s: dict[str, float] = field(default_factory=dict)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled with its tables as Arrow IPC streams: Ray's own serializer for Arrow
        tables calls pyarrow.compute with a Python int, and that imports pandas in the actor
        (0.26 s of CPU on its first result; see actors/rows.py)."""
        return _shard_result, (self.shard, to_ipc(self.rows), to_ipc(self.errors), self.actor, self.wall_s,
                               self.stage_s)


def _shard_result(shard: int, rows: pa.Buffer, errors: pa.Buffer, actor: str, wall_s: float,
                  stage_s: dict[str, float]) -> ShardResult:
    return ShardResult(shard, from_ipc(rows), from_ipc(errors), actor, wall_s, stage_s)


class RequestTimeout(RuntimeError):
    """A request did not finish in time; the actor's request slots may be stuck."""


class _SampleFailed(Exception):
    """Reading or preprocessing one sample failed; carries the stage for its error row."""

    def __init__(self, stage: str, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.stage = stage
        self.transient = transient


class _InFlight:
    """One sample on its way through the actor: the queue's userdata."""

    __slots__ = ("fetched", "meta", "ready", "sample", "state", "timing")

    def __init__(self, sample: Sample, state: _ShardState, fetched: Future | None = None) -> None:
        self.sample = sample
        self.state = state
        #: the sample's bytes being fetched ahead (a remote data root), or None
        self.fetched = fetched
        self.meta: Any = None
        self.timing = {"load_ms": 0.0, "preprocess_ms": 0.0}
        self.ready = 0.0  # when the input was ready for the device (perf_counter)


class _ShardState:
    """Collects one shard's outcomes; `done` fires when every sample has one.

    Each sample gets exactly one outcome: the first of row, error or timeout wins,
    and nothing is accepted after `abandon()`.
    """

    def __init__(self, shard: int, samples: Sequence[Sample], actor: str) -> None:
        self.shard = shard
        self.actor = actor
        self.order = {s.sample_id: i for i, s in enumerate(samples)}
        self.rows: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.stage_s = dict.fromkeys(STAGES, 0.0)
        self.remaining = len(samples)
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.submitted: dict[str, tuple[Sample, float]] = {}
        self.loading: dict[str, tuple[Sample, float]] = {}
        self.finished: set[str] = set()
        self.closed = False
        if not samples:
            self.done.set()

    def started(self, sample: Sample) -> None:
        with self.lock:
            if sample.sample_id not in self.finished:
                self.submitted[sample.sample_id] = (sample, time.monotonic())

    def load_started(self, sample: Sample) -> None:
        with self.lock:
            self.loading[sample.sample_id] = (sample, time.monotonic())

    def load_ended(self, sample: Sample) -> None:
        with self.lock:
            self.loading.pop(sample.sample_id, None)

    def overdue(self, timeout: float) -> list[Sample]:
        """Samples queued for inference more than `timeout` seconds ago and unfinished."""
        now = time.monotonic()
        with self.lock:
            return [s for s, t in self.submitted.values() if now - t > timeout]

    def overdue_loads(self, timeout: float) -> list[Sample]:
        """Samples whose read + preprocess started more than `timeout` seconds ago and has not ended."""
        now = time.monotonic()
        with self.lock:
            return [s for s, t in self.loading.values() if now - t > timeout and s.sample_id not in self.finished]

    def abandon(self) -> None:
        with self.lock:
            self.closed = True

    def add(self, row: dict[str, Any]) -> None:
        with self.lock:
            if not self._settle(row["sample_id"]):
                return
            self.rows.append(row)
            for stage in STAGES:
                self.stage_s[stage] += row[f"{stage}_ms"] / 1000.0
            self._check_done()

    def fail(self, sample: Sample, stage: str, message: str, transient: bool = False) -> None:
        """`transient`: the failure says nothing about the sample (a timeout); --resume retries it."""
        with self.lock:
            if not self._settle(sample.sample_id):
                return
            self.errors.append({"sample_id": sample.sample_id, "file": sample.file, "stage": stage,
                                "message": message, "shard": self.shard, "actor": self.actor,
                                "transient": transient})
            self._check_done()

    def outcomes(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The rows (in the shard's order) and the errors, once `done`."""
        with self.lock:
            return sorted(self.rows, key=lambda r: self.order[r["sample_id"]]), list(self.errors)

    def _settle(self, sample_id: str) -> bool:
        """Claim `sample_id`'s one outcome (the caller holds the lock and stores it next)."""
        if self.closed or sample_id in self.finished:
            return False
        self.finished.add(sample_id)
        self.submitted.pop(sample_id, None)
        self.remaining -= 1
        return True

    def _check_done(self) -> None:
        # Only after the outcome is stored: `process` wakes on `done` and reads the lists
        # at once. (Set inside `_settle`, a busy machine lost the last sample's row.)
        if self.remaining == 0:
            self.done.set()


class InferenceActor:
    """One runtime, its samples prepared ahead of it (device) or in its requests (CPU),
    returning one table per shard."""

    def __init__(self, cfg: ActorSettings, name: str, dataset: Dataset, family: ModelFamily,
                 backends: dict[str, str] | None = None) -> None:
        """`dataset`: the reader whose `load` this actor calls per sample; `family`: the
        model family's steps around inference. Both built and checked by the driver (the
        task's hooks); Ray gives a restarted actor the same ones. `backends`: the driver's
        runtime registry (actors/backends.REGISTRY), so a backend registered there runs here."""
        from rayinfer.actors.backends import register

        register(backends)
        self.cfg = cfg
        self.name = name
        self.cpus = available_cpus()
        # OpenCV (resize, NMS) spreads a call over a pool as large as the node's cores; within
        # the CPUs Ray gave this actor instead (the process is the actor's own: one actor per
        # Ray worker process). The same pool as OpenCV's default on a node of that size: one
        # OpenCV thread per call was measured no faster (docs/performance.md)
        cv2.setNumThreads(self.cpus)
        self.dataset = dataset
        # the runtime (--runtime, or the faster one measured on this node), planned for the device it got
        self.model, plan, self.runtime = open_model(cfg, self.cpus)
        self.family = family
        self.schema = rows_schema(self.family.schema)
        draft = getattr(family, "draft", None)  # Dataset.load's optional keyword, only when set
        self._load_options = {"draft": draft} if draft else {}
        # samples per request: --batch, or auto's choice for this device (actors/batching.py)
        self.batch, self.batch_probe = resolve_batch(cfg, self.model, plan.requests, self.cpus)
        self.preprocess_in = cfg.preprocess_in
        if self.preprocess_in == "auto":
            # a runtime with its own request pool (OpenVINO) computes in its own threads, and a
            # batch gathers samples prepared before it: loader threads prepare inputs for them,
            # as for a device
            own_pool = hasattr(self.model, "async_queue")
            cpu = self.model.device == "cpu" and not own_pool and self.batch == 1
            self.preprocess_in = "request" if cpu else "loader"
        if self.batch > 1:
            requests = AsyncInferQueue(BatchedModel(self.model, self.batch), jobs=plan.requests, hint=cfg.hint,
                                       cpus=self.cpus)
            self.queue = BatchingQueue(requests, self.batch, cfg.batch_wait_ms, workers=self.cpus)
        else:
            prepare = self._prepare if self.preprocess_in == "request" else None
            self.queue = queue_for(self.model, plan.requests, cfg.hint, self.cpus, prepare)
        self.queue.set_callback(self._on_done)
        # Decoding is CPU-bound: one reader per CPU plus one to cover file reads. More only
        # contend for the GIL and memory bandwidth (measured: 2 > 5 > 8 threads on one CPU).
        # With preprocess_in="request" these threads only queue samples for the requests.
        self.loader_threads = cfg.loader_threads or (self.cpus + 1)
        self.loader = LoaderPool(self.loader_threads, name=f"{name}-loader")
        # A remote data root: each sample's bytes are fetched ahead in I/O threads (waiting
        # on the network, not the CPU), FETCH_THREADS requests at once, so the loader threads
        # decode what has arrived instead of each waiting out a round trip.
        remote = hasattr(dataset, "fetch") and not getattr(dataset.root, "is_local", True)
        self.fetcher = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix=f"{name}-fetch") if remote else None
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()  # the host's work from here on (every thread)
        self.samples_done = 0
        self.shards_done = 0

    def info(self) -> dict[str, Any]:
        """Where and how this actor runs (for run.json)."""
        return {
            "name": self.name,
            "host": socket.gethostname(),
            "node_id": _node_id(),
            "pid": os.getpid(),
            "cpus": self.cpus,
            "requests": len(self.queue),
            # samples per request (--batch, or what auto chose) and, under auto, what it measured
            "batch": self.batch,
            "batch_probe": self.batch_probe,
            "threads_per_request": getattr(self.model, "intra_op_threads", None),
            "loader_threads": self.loader_threads,
            "fetch_threads": FETCH_THREADS if self.fetcher is not None else 0,
            "preprocess_in": self.preprocess_in,
            "providers": list(getattr(self.model, "providers", [])),
            "device": self.model.device,
            # what the runtime chose for itself (OpenVINO: streams, precision), where it says
            "runtime": {**self.runtime.record(), **getattr(self.model, "details", {})},
            # the rayinfer.actors this process imported: the shipped copy on a cluster
            "imported_from": os.path.dirname(os.path.abspath(__file__)),
            # what the device takes at most, samples/s: declared (simulated) or measured by the runtime probe
            "device_rate": self.device_rate(),
        }

    def device_rate(self) -> float | None:
        rate = getattr(self.model, "rate", None)  # a device whose rate depends on the batch
        if rate is not None:
            return rate(self.batch)
        declared = getattr(self.model, "device_rate", None)
        if declared:
            return float(declared)
        return (self.runtime.probe or {}).get(self.runtime.name)

    def stats(self) -> dict[str, Any]:
        """Counters and the accelerator-busy fraction since start."""
        uptime = time.perf_counter() - self.started
        return {
            "name": self.name,
            "pid": os.getpid(),
            "samples": self.samples_done,
            "shards": self.shards_done,
            "uptime_s": uptime,
            "busy_s": self.queue.busy_seconds,
            # CPU seconds of this process (all its threads) since its model was loaded
            "host_cpu_s": time.process_time() - self.cpu_started,
            "peak_rss_mb": peak_rss_mb(),
            "failed_requests": self.queue.failed,
            # samples per request on average (the last batch of a shard may go short)
            "batch_fill": _rounded(getattr(self.queue, "mean_fill", 1.0)),
            "callback_errors": self.queue.callback_errors,
        }

    def process(self, shard: int, samples: Sequence[Sample], final_attempt: bool = False) -> ShardResult:
        """Run one shard to completion. Several shards may run at once (threaded actor).

        A request still unfinished `request_timeout_s` after it was queued is hung:
        the shard fails with `RequestTimeout` so the loader retries it elsewhere, unless
        this is the shard's last attempt, where only the hung samples become errors.
        """
        t0 = time.perf_counter()
        state = _ShardState(shard, samples, self.name)
        for sample in samples:
            fetched = self.fetcher.submit(self.dataset.fetch, sample) if self.fetcher is not None else None
            self.loader.submit(self._start, _InFlight(sample, state, fetched))
        timeout, load_timeout = self.cfg.request_timeout_s, self.cfg.load_timeout_s
        while not state.done.wait(min(1.0, timeout, load_timeout)):
            for sample in state.overdue_loads(load_timeout):
                # A read that never returns (a FIFO, a hung network mount): only this sample
                # fails; a fresh loader thread takes the place of the stuck one.
                state.fail(sample, "load", f"{sample.file}: reading and preprocessing did not finish "
                           f"within {load_timeout:g}s", transient=True)
                if self.preprocess_in == "loader":
                    self.loader.add_thread()
            hung = state.overdue(timeout)
            if hung and not final_attempt:
                state.abandon()
                raise RequestTimeout(
                    f"{len(hung)} request(s) on {self.name} did not finish within {timeout:g}s "
                    f"(first: {hung[0].file})"
                )
            for sample in hung:
                state.fail(sample, "infer", f"{sample.file}: inference did not finish within {timeout:g}s",
                           transient=True)
        rows, errors = state.outcomes()
        table = to_table(rows, self.schema)  # never imports pandas: see actors/rows.py
        errors = to_table(errors, ERROR_SCHEMA)
        self.samples_done += len(samples)
        self.shards_done += 1
        return ShardResult(shard, table, errors, self.name, time.perf_counter() - t0, state.stage_s)

    def close(self) -> None:
        self.loader.shutdown()
        if self.fetcher is not None:
            self.fetcher.shutdown(wait=False, cancel_futures=True)
        self.queue.close()

    # -- per sample ------------------------------------------------------------
    def _start(self, job: _InFlight) -> None:
        """Queue one sample for inference (a loader thread; blocks while every request is busy)."""
        if job.state.closed:
            return
        feed: Any = job
        if self.preprocess_in == "loader":
            try:
                feed = self._prepare(job)
            except _SampleFailed as exc:
                return job.state.fail(job.sample, exc.stage, str(exc), exc.transient)
        job.state.started(job.sample)
        try:
            self.queue.start_async(feed, job)
        except Exception as exc:  # noqa: BLE001 - input mismatch, closed queue
            job.state.fail(job.sample, "infer", f"{job.sample.file}: {type(exc).__name__}: {exc}")

    def _prepare(self, job: _InFlight) -> Any:
        """Read and preprocess one sample: the model's input. Raises `_SampleFailed`."""
        sample = job.sample
        if job.state.closed:
            raise _SampleFailed("load", f"{sample.file}: shard abandoned")
        t0, t1 = time.perf_counter(), None
        job.state.load_started(sample)
        try:
            data = job.fetched.result() if job.fetched is not None else None
            if data is None and not self._load_options:
                raw = self.dataset.load(sample)
            else:
                raw = self.dataset.load(sample, data, **self._load_options)
            t1 = time.perf_counter()
            feed, job.meta = self.family.preprocess(raw, sample)
        except SampleError as exc:
            raise _SampleFailed(exc.stage, str(exc), exc.transient) from None
        except Exception as exc:  # noqa: BLE001 - any reader or preprocessing failure is this sample's
            stage = "load" if t1 is None else "preprocess"
            raise _SampleFailed(stage, f"{sample.file}: {type(exc).__name__}: {exc}") from None
        finally:
            job.state.load_ended(sample)
        job.ready = time.perf_counter()
        assert t1 is not None
        job.timing = {"load_ms": (t1 - t0) * 1000, "preprocess_ms": (job.ready - t1) * 1000}
        return feed

    def _on_done(self, request: InferRequest, job: _InFlight) -> None:
        sample, state = job.sample, job.state
        t0 = time.perf_counter()
        if isinstance(request.error, _SampleFailed):
            return state.fail(sample, request.error.stage, str(request.error), request.error.transient)
        if request.error is not None:
            return state.fail(sample, "infer", f"{sample.file}: {type(request.error).__name__}: {request.error}")
        try:
            row = self.family.postprocess(request.outputs or [], job.meta, sample)
        except Exception as exc:  # noqa: BLE001
            return state.fail(sample, "postprocess", f"{sample.file}: {type(exc).__name__}: {exc}")
        row.update(
            sample_id=sample.sample_id,
            file=sample.file,
            shard=state.shard,
            actor=self.name,
            queue_ms=max(0.0, (t0 - job.ready) * 1000 - request.latency),
            infer_ms=request.latency,
            postprocess_ms=(time.perf_counter() - t0) * 1000,
            **job.timing,
        )
        state.add(row)


class LoaderPool:
    """Threads that run submitted calls in order; `add_thread()` replaces one stuck in a
    read that never returns (a thread cannot be stopped from outside)."""

    def __init__(self, threads: int, name: str) -> None:
        self.name = name
        self._tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        for _ in range(threads):
            self.add_thread()

    def add_thread(self) -> None:
        t = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True)
        self._threads.append(t)
        t.start()

    def submit(self, fn: Any, *args: Any) -> None:
        self._tasks.put((fn, args))

    def shutdown(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            fn, args = task
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - a loader call reports its own failures
                log.exception("loader call failed")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # pragma: no cover
        return None

"""Batched requests: up to B samples in one request, where the model's batch axis allows it.

A GPU computes a batch of images for little more than one image costs; a CPU or an NPU
gains nothing from batches and everything from parallel single-image requests. So a
request carries one sample unless `--batch` says otherwise, or `--batch auto` measures
that the device gains from more.

- `batch_axis(model)`: what the model's leading axis takes: None (dynamic: any size), or
  its fixed size (1 for most exports).
- `asked_batch(text, model)`: `--batch` as a number (None for auto), checked against that
  axis: a `SetupError` naming the axis where the model cannot take it.
- `BatchedModel(model, size)`: the `Model` protocol over a list of samples per `run`: each
  sample's inputs (leading axis 1) are copied into one reused buffer per input and request
  thread, padded with zeros where the axis is fixed and the batch is short; the outputs are
  the batch's, the padding cut off. Batching never changes a sample's own outputs where the
  runtime computes each item of a batch independently (tests: every row equal).
- `BatchingQueue(queue, size, wait_ms)`: the request queue's shape, one sample per
  `start_async`. It gathers samples into requests of `queue`: when a request is free, it
  takes the samples ready (up to `size`), waiting at most `wait_ms` after the oldest of
  them for the batch to fill (Triton's max queue delay), and calls the callback once per
  sample with that sample's outputs (a `SampleRequest`), in a pool of `workers` threads so
  the request is free for the next batch while the last one is postprocessed. A sample
  that fails its read or preprocess never reaches it, so it never holds or fails the others.
- `choose_batch(model, requests, limit)`: `--batch auto` on a device that batches: the
  smallest of `SIZES` within `WITHIN` of the best measured rate whose request stays under
  `LATENCY_CAP_MS`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rayinfer.actors.model import Model, TensorSpec, check_inputs
from rayinfer.datasets.base import SetupError

log = logging.getLogger(__name__)

#: the batch sizes `--batch auto` measures, and the most it picks
SIZES = (1, 2, 4, 8, 16, 32, 64)
#: auto takes the smallest size whose rate is within this fraction of the best
WITHIN = 0.95
#: a request of the batch auto picks takes at most this long (ms) on average, with the
#: device's requests in flight (a request queued behind another counts its wait): latency
#: and the memory of samples held for batches stay bounded on a device whose rate still
#: grows with size
LATENCY_CAP_MS = 100.0
#: seconds of requests per size measured by auto (a request at least per slot)
ROUND_S = 0.15


def batch_axis(model: Model) -> int | None:
    """The size of the model's batch axis (the leading axis of its inputs): None where it is
    dynamic, 1 where any input fixes it at 1 or the inputs disagree."""
    sizes = {spec.shape[0] if spec.shape else 1 for spec in model.inputs}
    if sizes == {None}:
        return None
    fixed = sizes - {None}
    return fixed.pop() if len(fixed) == 1 and None not in sizes else 1


def axis_text(model: Model) -> str:
    """The model's batch axis in words, naming its first input."""
    spec = model.inputs[0]
    axis = batch_axis(model)
    where = f"model input '{spec.name}' {spec.describe()}"
    return f"{where}: its batch axis is dynamic" if axis is None else f"{where}: its batch axis is fixed at {axis}"


def parse_batch(text: str | int) -> int | None:
    """`--batch` as a number; None for auto. ValueError for anything else."""
    if str(text) == "auto":
        return None
    n = int(text)
    if n < 1:
        raise ValueError(f"must be auto or >= 1, got {text}")
    return n


def asked_batch(text: str, model: Model) -> int | None:
    """`--batch` as a number (None: auto), refused where the model's batch axis cannot take it."""
    n = parse_batch(text)
    axis = batch_axis(model)
    if n is not None and n > 1 and axis is not None and n > axis:
        fix = ("export the model with a dynamic batch axis (Ultralytics: `yolo export dynamic=True`) "
               "or leave --batch at auto" if axis == 1 else f"use --batch {axis} or less")
        raise SetupError(f"--batch {n}: {axis_text(model)}; {fix}")
    return n


class BatchedModel:
    """`model` fed a list of samples per `run` (see the module docstring)."""

    def __init__(self, model: Model, size: int) -> None:
        self.model = model
        self.size = size
        #: the batch a request is padded to (a fixed axis, or `size` for a runtime that builds an
        #: engine per input shape: TensorRT, `static_shapes`), or None (as many as came)
        self.fixed = batch_axis(model) or (size if getattr(model, "static_shapes", False) else None)
        self.device = model.device
        #: one sample's inputs: the model's, with a batch of 1
        self.inputs = tuple(TensorSpec(s.name, (1, *s.shape[1:]), s.dtype) for s in model.inputs)
        self.outputs = model.outputs
        self._local = threading.local()  # per request thread: its input buffers, reused

    def __getattr__(self, name: str) -> Any:
        # what the actor and run.json read of the model (providers, threads, rates, metadata);
        # never a runtime's own request pool, whose requests take one array per input
        if name == "async_queue":
            raise AttributeError(name)
        return getattr(self.model, name)

    def check(self, inputs: Any) -> dict[str, np.ndarray]:
        """One sample's inputs, checked against the model's with a batch of 1."""
        return check_inputs(self.inputs, inputs)

    def prepare(self, batch: Sequence[dict[str, np.ndarray]]) -> Sequence[dict[str, np.ndarray]]:
        return batch  # each sample checked as it came (`check`)

    def run(self, batch: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
        n = len(batch)
        rows = self.fixed or n
        if rows == 1:
            return self.model.run(batch[0])
        feed = {}
        for spec in self.inputs:
            buf = self._buffer(spec, rows)
            for i, sample in enumerate(batch):
                buf[i] = sample[spec.name][0]
            if rows > n:
                buf[n:] = 0  # padding: its outputs are cut off below
            feed[spec.name] = buf
        return [out[:n] for out in self.model.run(feed)]

    def _buffer(self, spec: TensorSpec, rows: int) -> np.ndarray:
        """This thread's buffer for `spec` with `rows` samples: a view of one allocated for the
        largest batch (from the model's own host memory where it has some: pinned for CUDA)."""
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        buf = buffers.get(spec.name)
        if buf is None:
            shape = (max(self.size, self.fixed or 0), *spec.shape[1:])
            host = getattr(self.model, "host_buffer", None)
            buf = buffers[spec.name] = host(shape, spec.dtype) if host else np.zeros(shape, spec.dtype)
        return buf[:rows]


class SampleRequest:
    """One sample's part of a finished batched request: its own `outputs` (leading axis 1),
    and the request's `error`, `latency` (ms in the model, for the whole batch) and size."""

    __slots__ = ("batch", "error", "index", "latency", "outputs", "request_id")

    def __init__(self, request: Any, index: int, size: int) -> None:
        self.request_id = request.request_id
        self.index = index
        self.error = request.error
        self.latency = request.latency
        self.batch = size
        outputs = request.outputs
        self.outputs = None if outputs is None else [out[index:index + 1] for out in outputs]


class _Failed:
    """A batch that could not be started: every sample of it gets `error`."""

    def __init__(self, error: BaseException) -> None:
        self.request_id = -1
        self.error = error
        self.latency = 0.0
        self.outputs = None


class BatchingQueue:
    """Requests of up to `size` samples over `queue` (an `AsyncInferQueue` over a
    `BatchedModel`), one sample per `start_async` (see the module docstring).

    >>> q = BatchingQueue(AsyncInferQueue(BatchedModel(model, 8), jobs=2), size=8, wait_ms=5)
    >>> q.set_callback(lambda request, userdata: print(userdata, request.outputs[0].shape))
    >>> for i, image in enumerate(images):
    ...     q.start_async({"images": image[None]}, i)   # blocks while `size` samples wait
    """

    def __init__(self, queue: Any, size: int, wait_ms: float, workers: int = 1) -> None:
        """`workers`: threads that run the per-sample callbacks, a batch's samples split
        among them. The request is free for the next batch as soon as its outputs are handed
        over: a batch's postprocessing never holds the device's request slot, and runs on
        as many cores as it is given."""
        from concurrent.futures import ThreadPoolExecutor

        from rayinfer.actors.queue import QueueClosedError

        self._closed_error = QueueClosedError
        self.queue = queue
        self.size = size
        self.wait_s = max(0.0, wait_ms) / 1000.0
        self.workers = max(1, workers)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="batch-callback")
        self._callbacks = 0  # chunks of samples handed to the pool and not yet called back
        self._callback: Callable[[Any, Any], None] | None = None
        self._pending: deque[tuple[dict[str, np.ndarray], Any, float]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._handing = 0  # batches taken from the pending samples and not yet in a request
        self.batches = 0  # requests started
        self.samples = 0  # samples they carried
        self.callback_errors = 0
        queue.set_callback(self._split)
        self._thread = threading.Thread(target=self._gather, name="batcher", daemon=True)
        self._thread.start()

    # -- the request queue's shape -----------------------------------------------------
    def set_callback(self, fn: Callable[[Any, Any], None] | None) -> None:
        self._callback = fn

    def start_async(self, inputs: Any, userdata: Any = None) -> None:
        """Queue one sample for the next batch; blocks while `size` samples already wait."""
        feed = self.queue.model.check(inputs)
        with self._cond:
            while len(self._pending) >= self.size and not self._closed:
                self._cond.wait()
            if self._closed:
                raise self._closed_error("BatchingQueue is closed")
            self._pending.append((feed, userdata, time.perf_counter()))
            self._cond.notify_all()

    def wait_all(self, timeout: float | None = None) -> bool:
        """Wait until no sample waits for a batch, every request is idle and every sample has
        been called back (samples queued meanwhile are not waited for). False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def settled(busy: Callable[[], Any]) -> bool:
            with self._cond:
                while busy() and not self._closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left)
            return True

        # in this order: a request's callbacks are handed over before it goes idle
        return (settled(lambda: self._pending or self._handing)
                and bool(self.queue.wait_all(None if deadline is None else max(0.0, deadline - time.monotonic())))
                and settled(lambda: self._callbacks))

    @property
    def mean_fill(self) -> float | None:
        """Samples per request so far."""
        return self.samples / self.batches if self.batches else None

    @property
    def busy_seconds(self) -> float:
        return self.queue.busy_seconds

    @property
    def failed(self) -> int:
        return self.queue.failed

    def __len__(self) -> int:
        return len(self.queue)

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new samples, stop gathering, close the requests (samples waiting are dropped)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.queue.close(timeout)
        self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- gathering ---------------------------------------------------------------------
    def _gather(self) -> None:
        while True:
            try:
                # The only caller of the queue's start_async is this thread, so the request
                # found idle here is still idle when the batch is handed to it.
                self.queue.get_idle_request_id()
            except self._closed_error:
                return
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                deadline = self._pending[0][2] + self.wait_s
                while len(self._pending) < self.size and not self._closed:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                take = [self._pending.popleft() for _ in range(min(self.size, len(self._pending)))]
                self._handing += 1
                self._cond.notify_all()
            self.batches += 1
            self.samples += len(take)
            users = [userdata for _, userdata, _ in take]
            try:
                self.queue.start_async([feed for feed, _, _ in take], users)
            except Exception as exc:  # noqa: BLE001 - a closed queue: each sample's callback says so
                self._split(_Failed(exc), users)
            finally:
                with self._cond:
                    self._handing -= 1
                    self._cond.notify_all()

    def _split(self, request: Any, users: Sequence[Any]) -> None:
        """The request's thread: each sample's part, called back in `workers` chunks."""
        if self._callback is None:
            return
        parts = [(SampleRequest(request, i, len(users)), userdata) for i, userdata in enumerate(users)]
        chunks = [parts[k::self.workers] for k in range(min(self.workers, len(parts)))]
        with self._cond:
            self._callbacks += len(chunks)
        for chunk in chunks:
            try:
                self._pool.submit(self._call, chunk)
            except RuntimeError:  # closed: the actor is going away
                self._called()

    def _call(self, chunk: Sequence[tuple[SampleRequest, Any]]) -> None:
        try:
            for part, userdata in chunk:
                try:
                    self._callback(part, userdata)  # type: ignore[misc]
                except Exception:  # noqa: BLE001 - one sample's callback never loses the others'
                    self.callback_errors += 1
                    log.exception("callback for sample %d of a batch of %d raised", part.index, part.batch)
        finally:
            self._called()

    def _called(self) -> None:
        with self._cond:
            self._callbacks -= 1
            self._cond.notify_all()


def batch_cap(cfg: Any) -> int:
    """The most samples a request of this job may carry, known before any actor starts (the
    driver sizes shards by it): `--batch N`, or under auto the largest of `SIZES` where the
    runtime the job settles on runs a device that batches (`batches(cfg)`), else 1."""
    asked = parse_batch(cfg.batch)
    if asked is not None:
        return asked
    from rayinfer.actors.backends import candidates, settled

    chosen = settled(candidates(cfg.model, cfg.runtime, cfg), cfg)
    batches = getattr(chosen, "batches", None)
    return max(SIZES) if batches is not None and batches(cfg) else 1


def resolve_batch(cfg: Any, model: Model, requests: int, cpus: int) -> tuple[int, dict[str, Any] | None]:
    """The batch an actor runs `model` at, and what auto measured ({size: samples/s}, cached
    or not; None where nothing was measured).

    `--batch N` as asked. Under auto: a fixed axis of B > 1 at B (every request computes B);
    1 where the axis is fixed at 1, where the device does not batch (a CPU, an NPU, a
    stream-shaped simulator: parallel single-sample requests win there), or where samples
    are prepared in the requests (`--preprocess-in request`); else `choose_batch`, measured
    once per model file, device and request count and cached beside the runtime probe."""
    asked = asked_batch(cfg.batch, model)
    if asked is not None:
        return asked, None
    axis = batch_axis(model)
    if axis is not None and axis > 1:
        return axis, None
    if axis == 1 or not getattr(model, "batches", False) or cfg.preprocess_in == "request":
        return 1, None
    key = _cache_key(cfg, model, requests, cpus)
    from rayinfer.actors.backends import choice

    entry = choice.entries().get(key) if key else None
    if isinstance(entry, dict) and isinstance(entry.get("batch"), int):
        return entry["batch"], {"rates": entry.get("rates"), "cached": True}
    chosen, rates = choose_batch(model, requests, axis)
    if key:
        choice.store(key, {"batch": chosen, "rates": {str(b): r for b, r in rates.items()},
                           "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return chosen, {"rates": {str(b): r for b, r in rates.items()}, "cached": False}


def _cache_key(cfg: Any, model: Model, requests: int, cpus: int) -> str | None:
    """What auto's choice depends on: the model file, the device (its providers and their
    options), the requests and the runtime's version. None for a model that is no file
    (a simulated device: measuring it is cheap, and its speed is set per node)."""
    import hashlib
    import json
    from pathlib import Path

    from rayinfer.actors.fetch import fetched
    from rayinfer.datasets.base import sha256_file

    path = Path(fetched(cfg).model)  # a remote model: this node's copy, which open_model fetched
    if not path.is_file():
        return None
    parts = {"batch_auto": sha256_file(path), "device": model.device,
             "providers": list(getattr(model, "providers", ())), "options": cfg.runtime_options,
             "runtime": cfg.runtime, "requests": requests, "cpus": cpus, "precision": cfg.precision,
             "sizes": list(SIZES), "within": WITHIN, "cap_ms": LATENCY_CAP_MS}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def choose_batch(model: Model, requests: int, limit: int | None = None,
                 sizes: Sequence[int] = SIZES, round_s: float = ROUND_S) -> tuple[int, dict[int, float]]:
    """`--batch auto` on a device that batches: (the batch, {size: samples/s measured}).

    Each size keeps `requests` requests of random inputs (the runtime probe's) busy for
    `round_s` seconds (after one request per slot to warm up); the rate counts samples. The
    smallest size within `WITHIN` of the best rate wins, among those whose mean request took at most `LATENCY_CAP_MS`
    (the smallest size always qualifies).
    """
    from rayinfer.actors.backends.choice import example_inputs, saturate
    from rayinfer.actors.queue import AsyncInferQueue

    tried = [b for b in sizes if limit is None or b <= limit] or [1]
    rates: dict[int, float] = {}
    latency: dict[int, float] = {}
    for b in tried:
        batched = BatchedModel(model, b)
        sample = example_inputs(batched)
        with AsyncInferQueue(batched, jobs=requests) as queue:
            saturate(queue, [sample] * b, 0.0, at_least=len(queue))  # warm-up: buffers, the runtime's first calls
            elapsed, latencies = saturate(queue, [sample] * b, round_s, at_least=len(queue))
        rates[b] = round(b * len(latencies) / elapsed, 2) if elapsed > 0 else 0.0
        latency[b] = float(np.mean(latencies)) if latencies else 0.0
        if latency[b] > LATENCY_CAP_MS and b != tried[0]:
            del rates[b]
            break  # larger batches only take longer
    best = max(rates.values())
    chosen = min(b for b, r in rates.items() if r >= WITHIN * best)
    log.info("--batch auto: %d (samples/s by batch: %s)", chosen, rates)
    return chosen, rates

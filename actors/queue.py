"""`AsyncInferQueue`: a pool of infer requests over one model, in OpenVINO's shape.

Several independent requests in flight let one request's host work overlap
another's compute. `start_async` hands inputs to an idle request and returns at
once; it blocks only when every request is busy. Each finished request calls the
callback with itself and the caller's userdata; the request stays busy until the
callback returns, so the callback may read `request.outputs` safely.

The optimal number of requests (`jobs=0`) follows `optimal_requests`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from rayinfer.actors.backends.onnxruntime import OnnxModel, RuntimeOptions
from rayinfer.actors.devices import Hint, optimal_requests, plan_requests
from rayinfer.actors.model import Model, available_cpus

log = logging.getLogger(__name__)


class QueueClosedError(RuntimeError):
    """The queue was closed before this request could start."""


class InferRequest:
    """One request slot. After completion: `outputs` or `error`, and `latency`: the
    milliseconds spent in the model (input preparation in the request excluded)."""

    def __init__(self, request_id: int) -> None:
        self.request_id = request_id
        self.outputs: list[np.ndarray] | None = None
        self.error: BaseException | None = None
        self.latency: float = 0.0
        self.completed = 0

    @property
    def results(self) -> dict[int, np.ndarray]:
        if self.error is not None:
            raise self.error
        return dict(enumerate(self.outputs or []))


_STOP = object()


class BusyClock:
    """Wall time with at least one request inside the model (the busy fraction's numerator).

    `enter()` as a request starts running, `leave()` as it stops; `seconds` so far. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._since: float | None = None
        self._total = 0.0

    def enter(self) -> None:
        with self._lock:
            self._inside += 1
            if self._inside == 1:
                self._since = time.perf_counter()

    def leave(self) -> None:
        with self._lock:
            self._inside -= 1
            if self._inside == 0 and self._since is not None:
                self._total += time.perf_counter() - self._since
                self._since = None

    @property
    def seconds(self) -> float:
        with self._lock:
            return self._total + (0.0 if self._since is None else time.perf_counter() - self._since)


class RequestSlots:
    """What every request pool exposes about its slots: `len(pool)`, `pool[id]` (the
    `InferRequest`), and `with pool:` (closed on exit). Subclasses set `_requests`
    and define `close`."""

    _requests: list[InferRequest]

    def close(self, timeout: float | None = 30.0) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._requests)

    def __getitem__(self, request_id: int) -> InferRequest:
        return self._requests[request_id]

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncInferQueue(RequestSlots):
    """A pool of infer requests over one thread-safe model: `jobs` of them (OpenVINO's
    name for the count; 0: the device's optimal number).

    `model` is a path to an .onnx file (then the session is built with the thread
    count the plan asks for) or a `Model` already built. `prepare`, if given, runs
    in the request's own thread before inference (used by `AsyncRuntime(parallel=1)`).
    """

    def __init__(
        self,
        model: Model | str | os.PathLike[str],
        jobs: int = 0,
        hint: Hint | str = Hint.THROUGHPUT,
        options: RuntimeOptions | None = None,
        prepare: Callable[[Any], Any] | None = None,
        cpus: int | None = None,
    ) -> None:
        requests = jobs  # OpenVINO's parameter name; a request count
        cpus = cpus or available_cpus()
        if isinstance(model, (str, os.PathLike)):
            options = options or RuntimeOptions()
            plan = plan_requests("gpu" if options.wants_gpu else "cpu", cpus, hint, requests)
            if not options.intra_op_threads:
                options = RuntimeOptions(**{**options.__dict__, "intra_op_threads": plan.threads_per_request})
            model = OnnxModel(model, options)
            requests = plan.requests
        elif requests <= 0:
            threads = getattr(model, "intra_op_threads", 1) or 1
            if getattr(model, "optimal_requests", None):  # the device says (simulated, NPU)
                requests = 1 if Hint(hint) is Hint.LATENCY else int(model.optimal_requests)  # type: ignore[attr-defined]
            elif model.device == "cpu":
                requests = 1 if Hint(hint) is Hint.LATENCY else max(1, cpus // threads)
            else:
                requests = optimal_requests(model.device, cpus, hint).requests
        self.model: Model = model
        self.hint = Hint(hint)
        self._prepare = prepare
        self._callback: Callable[[InferRequest, Any], None] | None = None
        self._requests = [InferRequest(i) for i in range(requests)]
        self._idle: deque[int] = deque(range(requests))
        self._cond = threading.Condition()
        self._closed = False
        self._inbox: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in range(requests)]
        self._waiting: deque[_Waiting] = deque()  # inputs whose start_async waits for a request
        self.callback_errors = 0
        self.failed = 0
        self.completed = 0
        self._busy = BusyClock()
        self._workers = [
            threading.Thread(target=self._work, args=(i,), name=f"infer-request-{i}", daemon=True)
            for i in range(requests)
        ]
        for t in self._workers:
            t.start()

    # -- OpenVINO-shaped API -------------------------------------------------
    def set_callback(self, fn: Callable[[InferRequest, Any], None] | None) -> None:
        """`fn(request, userdata)` runs in the request's thread once per finished request."""
        self._callback = fn

    def start_async(self, inputs: Any, userdata: Any = None) -> int:
        """Start one request; block only while every request is busy. Returns its id.

        Inputs are checked against the model here (unless a `prepare` step will
        produce them), so a wrong shape fails in the caller, naming the input.
        """
        feed = inputs if self._prepare is not None else self.model.prepare(inputs)
        with self._cond:
            if self._closed:
                raise QueueClosedError("AsyncInferQueue is closed")
            if not self._idle:
                # Every request is busy: wait until one takes this input. The request that
                # finishes first takes it directly, so it never sits idle waiting for us.
                waiting = _Waiting(feed, userdata)
                self._waiting.append(waiting)
                while waiting.request_id is None and not self._closed:
                    self._cond.wait()
                if waiting.request_id is None:
                    self._waiting.remove(waiting)
                    raise QueueClosedError("AsyncInferQueue is closed")
                return waiting.request_id
            rid = self._idle.popleft()
        self._inbox[rid].put((feed, userdata))
        return rid

    def wait_all(self, timeout: float | None = None) -> bool:
        """Wait until every request is idle. False if the timeout passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._idle) < len(self._requests):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def get_idle_request_id(self) -> int:
        """Id of an idle request, waiting for one if all are busy."""
        with self._cond:
            while not self._idle and not self._closed:
                self._cond.wait()
            if self._closed:
                raise QueueClosedError("AsyncInferQueue is closed")
            return self._idle[0]

    def is_ready(self) -> bool:
        """True when at least one request is idle (start_async would not block)."""
        with self._cond:
            return bool(self._idle) and not self._closed

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._requests) - len(self._idle)

    @property
    def busy_seconds(self) -> float:
        """Wall time with at least one request inside the model (for the busy fraction).

        Only inference counts: input preparation in the request's thread and the
        callback do not, so the fraction is the device's, whatever runs around it.
        """
        return self._busy.seconds

    # -- shutdown ------------------------------------------------------------
    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new requests, let running ones finish, then stop the threads.

        Callers blocked in `start_async` get `QueueClosedError`. Idempotent.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        for box in self._inbox:
            box.put(_STOP)
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._workers:
            if t is threading.current_thread():
                continue
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                log.warning("%s did not stop within %.1fs (a request is still running)", t.name, timeout)

    # -- worker --------------------------------------------------------------
    def _work(self, rid: int) -> None:
        request = self._requests[rid]
        box = self._inbox[rid]
        item = box.get()
        while item is not _STOP:
            feed, userdata = item
            t0 = time.perf_counter()
            try:
                if self._prepare is not None:
                    feed = self.model.prepare(self._prepare(feed))
                    t0 = time.perf_counter()
                self._busy.enter()
                try:
                    request.outputs, request.error = self.model.run(feed), None
                finally:
                    self._busy.leave()
            except BaseException as exc:  # noqa: BLE001 - surfaced through the callback
                request.outputs, request.error = None, exc
            request.latency = (time.perf_counter() - t0) * 1000.0
            request.completed += 1
            callback_failed = False
            callback = self._callback
            if callback is not None:
                try:
                    callback(request, userdata)
                except Exception:
                    callback_failed = True
                    log.exception("callback for request %d raised; the queue goes on", rid)
            elif request.error is not None:
                log.error("request %d failed and no callback is set: %s", rid, request.error)
            item = None
            with self._cond:
                self.completed += 1
                self.failed += request.error is not None
                self.callback_errors += callback_failed
                if self._waiting and not self._closed:
                    # hand-off: take the next waiting input ourselves, staying busy
                    waiting = self._waiting.popleft()
                    waiting.request_id = rid
                    item = (waiting.feed, waiting.userdata)
                else:
                    self._idle.append(rid)
                self._cond.notify_all()
            if item is None:
                item = box.get()


def queue_for(model: Model, requests: int, hint: Hint | str = Hint.THROUGHPUT, cpus: int | None = None,
              prepare: Callable[[Any], Any] | None = None) -> Any:
    """The request pool for `model`: the runtime's own (`model.async_queue`: OpenVINO's
    `AsyncInferQueue`), else this module's; this module's whenever inputs are prepared in
    the requests' threads (`prepare`), which only it has."""
    native = getattr(model, "async_queue", None)
    if native is not None and prepare is None:
        return native(requests)
    return AsyncInferQueue(model, jobs=requests, hint=hint, cpus=cpus, prepare=prepare)


class _Waiting:
    """An input whose `start_async` waits for a busy request to take it."""

    __slots__ = ("feed", "userdata", "request_id")

    def __init__(self, feed: Any, userdata: Any) -> None:
        self.feed = feed
        self.userdata = userdata
        self.request_id: int | None = None

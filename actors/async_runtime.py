"""`AsyncRuntime`: RBLN's asynchronous runtime shape over `AsyncInferQueue`.

- `await runtime.async_run(x)` for asyncio code (gather hundreds at once);
- `result = runtime.run(x); result.wait()` for threads or any other event loop;
- `parallel=2` is double buffering: a separate thread prepares the next input
  (the `preprocess` function) while the current one computes. With `parallel=1`
  preparation runs in the request's own thread, so it does not overlap compute.

`run` never blocks: submissions wait in an unbounded list, and one feeder thread
moves them into the request queue as requests become idle.

From an asyncio program (every input in flight at once, results in order):

    import asyncio
    import numpy as np
    from rayinfer.actors import AsyncRuntime

    async def main(runtime: AsyncRuntime, inputs: list[np.ndarray]) -> list[list[np.ndarray]]:
        return await asyncio.gather(*(runtime.async_run(x) for x in inputs))

    with AsyncRuntime("model.onnx", parallel=2) as runtime:
        outputs = asyncio.run(main(runtime, [np.zeros((1, 3, 640, 640), np.float32)] * 8))

From threads: `result = runtime.run(x)`, then `result.wait()`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from rayinfer.actors.backends.onnxruntime import RuntimeOptions
from rayinfer.actors.model import Model
from rayinfer.actors.queue import AsyncInferQueue, Hint, InferRequest, QueueClosedError


class AsyncResult:
    """One submitted input. `wait` returns the outputs or raises the request's error."""

    def __init__(self) -> None:
        self.future: concurrent.futures.Future[list[np.ndarray]] = concurrent.futures.Future()
        self.latency: float | None = None

    def wait(self, timeout: float | None = None) -> list[np.ndarray]:
        """Block until done. Raises TimeoutError after `timeout` seconds."""
        return self.future.result(timeout)

    def done(self) -> bool:
        return self.future.done()


_STOP = object()


class AsyncRuntime:
    """Asynchronous runs over one model, with optional double-buffered preparation."""

    def __init__(
        self,
        model: Model | str | os.PathLike[str],
        parallel: int = 1,
        preprocess: Callable[[Any], Any] | None = None,
        requests: int = 1,
        hint: Hint | str = Hint.THROUGHPUT,
        options: RuntimeOptions | None = None,
    ) -> None:
        if parallel not in (1, 2):
            raise ValueError(f"parallel must be 1 or 2, got {parallel}")
        self.parallel = parallel
        self._preprocess = preprocess
        inline = preprocess if parallel == 1 else None
        self._queue = AsyncInferQueue(model, jobs=requests, hint=hint, options=options, prepare=inline)
        self._queue.set_callback(self._finish)
        self._pending: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._feeder = threading.Thread(target=self._feed, name="runtime-feeder", daemon=True)
        self._feeder.start()

    @property
    def model(self) -> Model:
        return self._queue.model

    @property
    def queue(self) -> AsyncInferQueue:
        return self._queue

    def run(self, x: Any) -> AsyncResult:
        """Submit one input and return at once. Without `preprocess`, the input is
        checked against the model here and a mismatch raises `InputError`."""
        if self._preprocess is None:
            x = self._queue.model.prepare(x)
        task = AsyncResult()
        with self._lock:
            if self._closed:
                raise QueueClosedError("AsyncRuntime is closed")
            self._pending.put((x, task))
        return task

    async def async_run(self, x: Any) -> list[np.ndarray]:
        """Awaitable form of `run`, for asyncio."""
        return await asyncio.wrap_future(self.run(x).future)

    def close(self, timeout: float | None = 30.0) -> None:
        """Cancel submissions not yet started (QueueClosedError), finish running ones."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._pending.put(_STOP)
        self._feeder.join(timeout)
        self._queue.close(timeout)

    def __enter__(self) -> AsyncRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _feed(self) -> None:
        while True:
            item = self._pending.get()
            if item is _STOP:
                return
            x, task = item
            if self._closed:
                task.future.set_exception(QueueClosedError("runtime closed before this input started"))
                continue
            try:
                if self.parallel == 2 and self._preprocess is not None:
                    x = self._preprocess(x)
                self._queue.start_async(x, task)
            except BaseException as exc:  # noqa: BLE001 - goes to the task
                task.future.set_exception(exc)

    @staticmethod
    def _finish(request: InferRequest, task: AsyncResult) -> None:
        task.latency = request.latency
        if request.error is not None:
            task.future.set_exception(request.error)
        else:
            task.future.set_result(list(request.outputs or []))

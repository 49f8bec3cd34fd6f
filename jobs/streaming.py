"""The job's evaluation beside its inference: each committed shard goes to the task's
`StreamingEvaluation` in a thread of its own, so that when the last shard commits only
`finish` is left.

    worker = EvaluationWorker(stream, read=lambda shard: table, resumed=[0, 3])
    worker.add(shard, rows)         # the driver's loop, per committed shard: returns at once
    ev = worker.finish(tables)      # the metrics; None where a shard failed to evaluate

Guarantees:
    - shards the run committed before (`--resume`) are fed first, read from the output;
    - the driver's loop never waits: a shard is queued with its rows, or, while more than
      `BACKLOG` wait, as its index alone (read back from the output when its turn comes), so
      the rows held stay bounded whatever the evaluation's pace;
    - a shard whose evaluation raises is logged, naming it, and `finish` returns None: the
      caller evaluates the saved run instead (an error, or the right numbers; never metrics
      missing that shard).

The thread's matching is numpy (and pycocotools) work that mostly releases the GIL; on a
machine whose cores all run actors it takes a share of their time (docs/performance.md).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pyarrow as pa

from rayinfer.jobs.evaluate import Evaluation, StreamingEvaluation

log = logging.getLogger(__name__)

#: shards queued with their rows; past this many waiting, a shard is queued as its index
BACKLOG = 8

_DONE = object()


class EvaluationWorker:
    """Feeds `stream` from a thread; `read(shard)` reads a committed shard's rows back."""

    def __init__(self, stream: StreamingEvaluation, read: Callable[[int], pa.Table],
                 resumed: Sequence[int] = ()) -> None:
        self.stream, self.read = stream, read
        self.busy_s = 0.0  # seconds spent adding shards
        self.failed: str | None = None  # the first failure, naming its shard
        self._closed = False
        self._queue: queue.Queue = queue.Queue()
        for shard in sorted(resumed):
            self._queue.put((shard, None))
        self._thread = threading.Thread(target=self._run, name="rayinfer-evaluation", daemon=True)
        self._thread.start()

    def add(self, shard: int, rows: pa.Table) -> None:
        """Queue a committed shard's prediction rows (returns at once)."""
        self._queue.put((shard, rows if self._queue.qsize() < BACKLOG else None))

    def finish(self, tables: Callable[[], Iterator[pa.Table]]) -> Evaluation | None:
        """Wait for the queued shards, then the stream's metrics (None if a shard failed;
        `tables`: as `StreamingEvaluation.finish` takes them)."""
        self._queue.put(_DONE)
        self._thread.join()
        if self.failed is not None:
            return None
        return self.stream.finish(tables)

    def close(self) -> None:
        """Stop without evaluating what is still queued (the job ended another way)."""
        self._closed = True
        self._queue.put(_DONE)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self.failed is not None or self._closed:
                continue
            shard, rows = item
            t = time.perf_counter()
            try:
                self.stream.add(shard, rows if rows is not None else self.read(shard))
            except Exception as exc:  # noqa: BLE001 - reported, and the saved run evaluated instead
                self.failed = f"shard {shard}: {type(exc).__name__}: {exc}"
                log.warning("evaluating %s; the metrics will come from the saved run once every shard is in",
                            self.failed)
            self.busy_s += time.perf_counter() - t

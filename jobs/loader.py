"""The loader stage: deals work units (shards) to inference actors.

- Bounded: at most `in_flight` shards per actor are outstanding, so memory does not
  grow with the dataset (the driver holds only sample ids for the rest).
- Dynamic: an actor gets its next shard when it returns one, so a slow actor gets
  less work. Two shards in flight per actor keep it busy across shard boundaries.
- Safe: a shard whose actor died goes back to the front of the queue for another
  (or the restarted) actor; after `max_attempts` it is returned as failed, so its
  samples become error rows instead of a hung or lost job.

What travels is sample ids and file names; actors read the files themselves.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from actors.actor import ShardResult
from datasets.base import Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """A work unit with a stable number: the same samples under the same number on every run."""

    index: int
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class FailedShard:
    """A shard that could not be run after every attempt; its samples are errors."""

    shard: Shard
    reason: str
    attempts: int


def make_shards(samples: Sequence[Sample], size: int) -> list[Shard]:
    return [Shard(i // size, tuple(samples[i : i + size])) for i in range(0, len(samples), size)]


class LoaderStage:
    """Feeds shards to actors and yields their results as they finish."""

    def __init__(self, actors: Sequence[Any], names: Sequence[str], in_flight: int = 2,
                 max_attempts: int = 3, shard_timeout_s: float | None = None,
                 max_consecutive_failures: int = 3) -> None:
        if not actors:
            raise ValueError("no actors to run on")
        self.actors = list(actors)
        self.names = list(names)
        self.in_flight = in_flight
        self.max_attempts = max_attempts
        self.shard_timeout_s = shard_timeout_s
        self.max_consecutive_failures = max_consecutive_failures
        self.shards_per_actor = dict.fromkeys(self.names, 0)
        self.requeued = 0
        self.retired: list[str] = []

    def run(self, shards: Iterable[Shard]) -> Iterator[ShardResult | FailedShard]:
        queue: deque[Shard] = deque(shards)
        attempts: dict[int, int] = {}
        failures = [0] * len(self.actors)
        alive = set(range(len(self.actors)))
        running: dict[Any, tuple[int, Shard, float]] = {}
        load = [0] * len(self.actors)

        def submit(a: int) -> None:
            while queue and load[a] < self.in_flight and a in alive:
                shard = queue.popleft()
                attempts[shard.index] = attempts.get(shard.index, 0) + 1
                ref = self.actors[a].process.remote(shard.index, shard.samples)
                running[ref] = (a, shard, time.monotonic())
                load[a] += 1

        for a in range(len(self.actors)):
            submit(a)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=self._wait_timeout(running))
            if not ready:
                yield from self._expire(running, load, queue, attempts, alive, failures, submit)
                continue
            ref = ready[0]
            a, shard, _ = running.pop(ref)
            load[a] -= 1
            try:
                result: ShardResult = ray.get(ref)
            except (RayActorError, RayTaskError, GetTimeoutError) as exc:
                failures[a] += 1
                reason = f"actor {self.names[a]} failed on shard {shard.index}: {type(exc).__name__}: {_first_line(exc)}"
                log.warning("%s; re-queueing the shard", reason)
                if failures[a] >= self.max_consecutive_failures or not self._responds(a):
                    self._retire(a, alive)
                yield from self._retry(shard, reason, queue, attempts)
            else:
                failures[a] = 0
                self.shards_per_actor[self.names[a]] += 1
                yield result
            if not alive and (queue or running):
                if not running:
                    for shard in queue:
                        yield FailedShard(shard, "no inference actor is left alive", attempts.get(shard.index, 0))
                    queue.clear()
                continue
            for b in sorted(alive, key=lambda i: load[i]):
                submit(b)

    # -- helpers -----------------------------------------------------------------
    def _retry(self, shard: Shard, reason: str, queue: deque[Shard], attempts: dict[int, int]
               ) -> Iterator[FailedShard]:
        if attempts.get(shard.index, 0) >= self.max_attempts:
            yield FailedShard(shard, reason, attempts[shard.index])
        else:
            self.requeued += 1
            queue.appendleft(shard)

    def _responds(self, a: int, timeout: float = 60.0) -> bool:
        """Whether actor `a` answers (a restarted actor does once its model is loaded)."""
        try:
            ray.get(self.actors[a].stats.remote(), timeout=timeout)
            return True
        except Exception:  # noqa: BLE001 - dead, unreachable or still down
            return False

    def _retire(self, a: int, alive: set[int]) -> None:
        if a in alive:
            alive.discard(a)
            self.retired.append(self.names[a])
            log.warning("actor %s retired; %d actors left", self.names[a], len(alive))

    def _wait_timeout(self, running: dict[Any, tuple[int, Shard, float]]) -> float | None:
        if self.shard_timeout_s is None:
            return None
        oldest = min(t for _, _, t in running.values())
        return max(0.1, oldest + self.shard_timeout_s - time.monotonic())

    def _expire(self, running, load, queue, attempts, alive, failures, submit) -> Iterator[FailedShard]:
        """Shards past their deadline: cancel, count against the actor, retry elsewhere."""
        now = time.monotonic()
        for ref, (a, shard, started) in list(running.items()):
            if self.shard_timeout_s is not None and now - started > self.shard_timeout_s:
                running.pop(ref)
                load[a] -= 1
                ray.cancel(ref, force=False)
                failures[a] += 1
                reason = f"shard {shard.index} on actor {self.names[a]} timed out after {self.shard_timeout_s:.0f}s"
                log.warning("%s; re-queueing it", reason)
                if failures[a] >= self.max_consecutive_failures:
                    self._retire(a, alive)
                yield from self._retry(shard, reason, queue, attempts)
        for b in sorted(alive, key=lambda i: load[i]):
            submit(b)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

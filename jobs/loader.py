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
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from actors.actor import RequestTimeout, ShardResult
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
                 max_consecutive_failures: int = 3, restart_wait_s: float = 60.0) -> None:
        if not actors:
            raise ValueError("no actors to run on")
        self.actors = list(actors)
        self.names = list(names)
        self.in_flight = in_flight
        self.max_attempts = max_attempts
        self.shard_timeout_s = shard_timeout_s
        self.max_consecutive_failures = max_consecutive_failures
        self.restart_wait_s = restart_wait_s
        self.shards_per_actor = dict.fromkeys(self.names, 0)
        self.requeued = 0
        self.retired: list[str] = []
        # run state
        self._queue: deque[Shard] = deque()
        self._attempts: dict[int, int] = {}
        self._running: dict[Any, tuple[int, Shard, float]] = {}
        self._load = [0] * len(self.actors)
        self._failures = [0] * len(self.actors)
        self._alive = set(range(len(self.actors)))
        self._collateral: set[Any] = set()

    def run(self, shards: Iterable[Shard]) -> Iterator[ShardResult | FailedShard]:
        self._queue.extend(shards)
        self._fill()
        while self._running:
            ready, _ = ray.wait(list(self._running), num_returns=1, timeout=self._wait_timeout())
            if ready:
                yield from self._finish(ready[0])
            else:
                yield from self._expire()
            if not self._alive and not self._running:
                for shard in self._queue:
                    yield FailedShard(shard, "no inference actor is left alive", self._attempts.get(shard.index, 0))
                self._queue.clear()
            self._fill()

    # -- steps -------------------------------------------------------------------------
    def _fill(self) -> None:
        """Give queued shards to the least loaded live actors, up to `in_flight` each."""
        for a in sorted(self._alive, key=lambda i: self._load[i]):
            while self._queue and self._load[a] < self.in_flight:
                shard = self._queue.popleft()
                attempt = self._attempts[shard.index] = self._attempts.get(shard.index, 0) + 1
                ref = self.actors[a].process.remote(shard.index, shard.samples, attempt >= self.max_attempts)
                self._running[ref] = (a, shard, time.monotonic())
                self._load[a] += 1

    def _finish(self, ref: Any) -> Iterator[ShardResult | FailedShard]:
        a, shard, _ = self._running.pop(ref)
        self._load[a] -= 1
        try:
            result: ShardResult = ray.get(ref)
        except (RayActorError, RayTaskError, GetTimeoutError) as exc:
            if ref in self._collateral or isinstance(exc, ActorUnavailableError):
                # its actor was restarting (by us, or by Ray): not this shard's fault
                self._collateral.discard(ref)
                self._attempts[shard.index] -= 1
                self._queue.appendleft(shard)
                self.requeued += 1
                if a not in self._collateral_actors() and not self._responds(a):
                    self._retire(a)
                return
            reason = f"actor {self.names[a]} failed on shard {shard.index}: {type(exc).__name__}: {_first_line(exc)}"
            log.warning("%s; re-queueing the shard", reason)
            self._failures[a] += 1
            # A hung request leaves the actor's request slots stuck: restart it fresh.
            healthy = self._restart(a) if isinstance(exc, RequestTimeout) else self._responds(a)
            if self._failures[a] >= self.max_consecutive_failures or not healthy:
                self._retire(a)
            yield from self._retry(shard, reason)
        else:
            self._failures[a] = 0
            self.shards_per_actor[self.names[a]] += 1
            yield result

    def _expire(self) -> Iterator[FailedShard]:
        """Shards past the whole-shard deadline (a backstop for per-request timeouts)."""
        if self.shard_timeout_s is None:
            return
        now = time.monotonic()
        for ref, (a, shard, started) in list(self._running.items()):
            if now - started <= self.shard_timeout_s or ref in self._collateral:
                continue
            self._running.pop(ref)
            self._load[a] -= 1
            reason = f"shard {shard.index} on actor {self.names[a]} timed out after {self.shard_timeout_s:.0f}s"
            log.warning("%s; restarting the actor and re-queueing the shard", reason)
            self._failures[a] += 1
            if not self._restart(a) or self._failures[a] >= self.max_consecutive_failures:
                self._retire(a)
            yield from self._retry(shard, reason)

    # -- helpers -----------------------------------------------------------------------
    def _retry(self, shard: Shard, reason: str) -> Iterator[FailedShard]:
        if self._attempts.get(shard.index, 0) >= self.max_attempts:
            yield FailedShard(shard, reason, self._attempts[shard.index])
        else:
            self.requeued += 1
            self._queue.appendleft(shard)

    def _restart(self, a: int) -> bool:
        """Kill actor `a` so Ray restarts it fresh (its other shards fail as collateral);
        True once a new process answers."""
        old_pid = self._pid(a, timeout=5.0)
        self._collateral.update(ref for ref, (b, _, _) in self._running.items() if b == a)
        ray.kill(self.actors[a], no_restart=False)
        deadline = time.monotonic() + self.restart_wait_s
        while time.monotonic() < deadline:
            pid = self._pid(a, timeout=5.0)
            if pid is not None and pid != old_pid:
                return True
            time.sleep(0.2)
        return False

    def _collateral_actors(self) -> set[int]:
        return {self._running[r][0] for r in self._collateral if r in self._running}

    def _responds(self, a: int) -> bool:
        """Whether actor `a` answers (a restarted actor does once its model is loaded)."""
        return self._pid(a, timeout=self.restart_wait_s) is not None

    def _pid(self, a: int, timeout: float) -> int | None:
        try:
            return ray.get(self.actors[a].stats.remote(), timeout=timeout)["pid"]
        except Exception:  # noqa: BLE001 - dead, unreachable or still down
            return None

    def _retire(self, a: int) -> None:
        if a in self._alive:
            self._alive.discard(a)
            self.retired.append(self.names[a])
            log.warning("actor %s retired; %d actors left", self.names[a], len(self._alive))

    def _wait_timeout(self) -> float | None:
        if self.shard_timeout_s is None:
            return None
        oldest = min(t for _, _, t in self._running.values())
        return max(0.1, oldest + self.shard_timeout_s - time.monotonic())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

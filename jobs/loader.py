"""The loader stage: deals work units (shards) to inference actors.

- Bounded: at most `in_flight` shards per actor are outstanding, so memory does not
  grow with the dataset (the driver holds only sample ids for the rest).
- Dynamic: an actor gets its next shard when it returns one, so a slow actor gets
  less work. Two shards in flight per actor keep it busy across shard boundaries.
- Safe: a shard whose actor was lost goes back to the front of the queue, without
  counting as one of its attempts (the loss says nothing about its samples). The lost
  actor is waited for while Ray may still restart it (up to `restart_wait_s`), and
  only an actor Ray reports dead for good (`ActorDiedError`) or that does not come
  back in time is retired. A shard whose own run fails (an error in the actor, a hung
  request) is retried up to `max_attempts` times, then returned as failed, so its
  samples become error rows instead of a hung or lost job.
- Honest at the end: when no actor is left and none can come back, the shards not
  run are left in `unfinished`, never returned as failed: the driver does not commit
  them, and `--resume` runs them.

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
from ray.exceptions import ActorDiedError, RayActorError

from rayinfer.actors.actor import RequestTimeout, ShardResult
from rayinfer.datasets.base import Sample

log = logging.getLogger(__name__)

#: Seconds between two liveness probes of an actor Ray is restarting.
PROBE_INTERVAL_S = 0.25


@dataclass(frozen=True)
class Shard:
    """A work unit with a stable number: the same samples under the same number on every run."""

    index: int
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class FailedShard:
    """A shard that could not be run after every attempt; its samples are errors.

    `transient`: the failure says nothing about the samples (a lost actor, a timeout,
    an error in the actor itself), so `--resume` runs the shard again.
    """

    shard: Shard
    reason: str
    attempts: int
    transient: bool = True


def make_shards(samples: Sequence[Sample], size: int) -> list[Shard]:
    """Work units of `size` samples, in order; for a packed dataset (samples with a "pack"
    in their info) one unit per packed shard, so each is read front to back, once."""
    if samples and all("pack" in s.info for s in samples):
        groups: dict[str, list[Sample]] = {}
        for s in samples:
            groups.setdefault(s.info["pack"], []).append(s)
        return [Shard(i, tuple(group)) for i, group in enumerate(groups.values())]
    return [Shard(i // size, tuple(samples[i : i + size])) for i in range(0, len(samples), size)]


@dataclass
class _Recovery:
    """An actor being waited for: a probe in flight, or the time to send the next one."""

    deadline: float
    old_pid: int | None
    probe: Any = None
    next_probe: float = 0.0


class LoaderStage:
    """Feeds shards to actors and yields their results as they finish.

    >>> stage = LoaderStage(actors, ["actor-0", "actor-1"])
    >>> for result in stage.run(make_shards(samples, 16)):
    ...     commit(result)
    >>> stage.unfinished  # shards no actor was left to run
    """

    def __init__(self, actors: Sequence[Any], names: Sequence[str], in_flight: int = 2,
                 max_attempts: int = 3, shard_timeout_s: float | None = None,
                 max_consecutive_failures: int = 3, restart_wait_s: float = 120.0,
                 max_losses: int = 6) -> None:
        if not actors:
            raise ValueError("no actors to run on")
        self.actors = list(actors)
        self.names = list(names)
        self.in_flight = in_flight
        self.max_attempts = max_attempts
        self.shard_timeout_s = shard_timeout_s
        self.max_consecutive_failures = max_consecutive_failures
        self.restart_wait_s = restart_wait_s
        self.max_losses = max_losses  # a shard in flight at this many actor losses is given up (transient)
        self.shards_per_actor = dict.fromkeys(self.names, 0)
        self.requeued = 0
        self.restarts = 0
        self.retired: list[str] = []
        self.unfinished: list[Shard] = []
        # run state
        self._queue: deque[Shard] = deque()
        self._attempts: dict[int, int] = {}
        self._losses: dict[int, int] = {}
        self._running: dict[Any, tuple[int, Shard, float]] = {}
        self._load = [0] * len(self.actors)
        self._failures = [0] * len(self.actors)
        self._ready = set(range(len(self.actors)))
        self._recovering: dict[int, _Recovery] = {}

    def run(self, shards: Iterable[Shard]) -> Iterator[ShardResult | FailedShard]:
        self._queue.extend(shards)
        self._fill()
        while self._running or (self._queue and self._recovering):
            probes = {r.probe: a for a, r in self._recovering.items() if r.probe is not None}
            refs = list(self._running) + list(probes)
            timeout = self._wait_timeout()
            if refs:
                ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
            else:
                time.sleep(timeout or PROBE_INTERVAL_S)
                ready = []
            for ref in ready:
                if ref in probes:
                    self._probed(probes[ref], ref)
                else:
                    yield from self._finish(ref)
            yield from self._expire()
            self._advance_recoveries()
            self._fill()
        if self._queue:
            self.unfinished = list(self._queue)
            self._queue.clear()
            log.error("no inference actor is left alive; %d shards not run", len(self.unfinished))

    # -- steps -------------------------------------------------------------------------
    def _fill(self) -> None:
        """Give queued shards to the least loaded ready actors, up to `in_flight` each."""
        for a in sorted(self._ready, key=lambda i: self._load[i]):
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
        except RayActorError as exc:
            # The actor was lost (killed, crashed, its node gone): not this shard's fault.
            yield from self._lost(a, shard, exc)
            return
        except Exception as exc:  # noqa: BLE001 - the actor's own error (RayTaskError), or a hang
            reason = f"actor {self.names[a]} failed on shard {shard.index}: {type(exc).__name__}: {first_line(exc)}"
            log.warning("%s; re-queueing the shard", reason)
            self._failures[a] += 1
            if self._failures[a] >= self.max_consecutive_failures:
                self._retire(a, f"{self._failures[a]} shards failed in a row")
            elif isinstance(exc, RequestTimeout):
                self._restart(a)  # a hung request leaves its slot stuck: start the actor afresh
            yield from self._retry(shard, reason)
        else:
            self._failures[a] = 0
            self.shards_per_actor[self.names[a]] += 1
            yield result

    def _lost(self, a: int, shard: Shard, exc: BaseException) -> Iterator[FailedShard]:
        self._attempts[shard.index] -= 1  # not an attempt of its own
        losses = self._losses[shard.index] = self._losses.get(shard.index, 0) + 1
        log.warning("actor %s lost while running shard %d (%s); re-queueing it", self.names[a], shard.index,
                    type(exc).__name__)
        self._recover(a)
        if losses >= self.max_losses:
            yield FailedShard(shard, f"shard {shard.index}: its actor was lost {losses} times while running it",
                              self._attempts[shard.index])
        else:
            self.requeued += 1
            self._queue.appendleft(shard)

    def _expire(self) -> Iterator[FailedShard]:
        """Shards past the whole-shard deadline (a backstop for per-request timeouts)."""
        if self.shard_timeout_s is None:
            return
        now = time.monotonic()
        for ref, (a, shard, started) in list(self._running.items()):
            if now - started <= self.shard_timeout_s:
                continue
            self._running.pop(ref)
            self._load[a] -= 1
            reason = f"shard {shard.index} on actor {self.names[a]} timed out after {self.shard_timeout_s:.0f}s"
            log.warning("%s; restarting the actor and re-queueing the shard", reason)
            self._failures[a] += 1
            if self._failures[a] >= self.max_consecutive_failures:
                self._retire(a, f"{self._failures[a]} shards failed in a row")
            else:
                self._restart(a)
            yield from self._retry(shard, reason)

    # -- actor health ------------------------------------------------------------------
    def _restart(self, a: int) -> None:
        """Kill actor `a` so Ray restarts it fresh; its other shards come back as lost."""
        old_pid = self._pid(a)
        ray.kill(self.actors[a], no_restart=False)
        self._recover(a, old_pid)

    def _recover(self, a: int, old_pid: int | None = None) -> None:
        """Stop dealing to actor `a` and probe it until it answers, is dead, or time runs out."""
        if a not in self._ready:
            return  # already being waited for, or retired
        self._ready.discard(a)
        self._recovering[a] = _Recovery(time.monotonic() + self.restart_wait_s, old_pid,
                                        probe=self.actors[a].stats.remote())

    def _probed(self, a: int, ref: Any) -> None:
        recovery = self._recovering[a]
        recovery.probe = None
        try:
            pid = ray.get(ref)["pid"]
        except ActorDiedError as exc:
            # dead for good: Ray will not restart it (restarts used up, or killed for good)
            self._retire(a, f"Ray reports it dead ({first_line(exc)})")
            return
        except Exception:  # noqa: BLE001 - ActorUnavailableError: Ray is restarting it
            pid = None
        if pid is None or pid == recovery.old_pid:
            recovery.next_probe = time.monotonic() + PROBE_INTERVAL_S
            return
        del self._recovering[a]
        self._ready.add(a)
        self._failures[a] = 0
        self.restarts += 1
        log.info("actor %s is back (pid %d)", self.names[a], pid)

    def _advance_recoveries(self) -> None:
        now = time.monotonic()
        for a, recovery in list(self._recovering.items()):
            if now > recovery.deadline:
                self._retire(a, f"it did not come back within {self.restart_wait_s:g}s")
            elif recovery.probe is None and now >= recovery.next_probe:
                recovery.probe = self.actors[a].stats.remote()

    def _pid(self, a: int, timeout: float = 5.0) -> int | None:
        try:
            return ray.get(self.actors[a].stats.remote(), timeout=timeout)["pid"]
        except Exception:  # noqa: BLE001 - dead, unreachable or still down
            return None

    def _retire(self, a: int, why: str) -> None:
        if self.names[a] in self.retired:
            return
        self._recovering.pop(a, None)
        self._ready.discard(a)
        self.retired.append(self.names[a])
        log.warning("actor %s retired: %s; %d actors left", self.names[a], why,
                    len(self._ready) + len(self._recovering))

    # -- helpers -----------------------------------------------------------------------
    def _retry(self, shard: Shard, reason: str) -> Iterator[FailedShard]:
        if self._attempts.get(shard.index, 0) >= self.max_attempts:
            yield FailedShard(shard, reason, self._attempts[shard.index])
        else:
            self.requeued += 1
            self._queue.appendleft(shard)

    def _wait_timeout(self) -> float | None:
        deadlines = []
        if self.shard_timeout_s is not None and self._running:
            deadlines.append(min(t for _, _, t in self._running.values()) + self.shard_timeout_s)
        for recovery in self._recovering.values():
            deadlines.append(recovery.deadline)
            if recovery.probe is None:
                deadlines.append(recovery.next_probe)
        if not deadlines:
            return None
        return max(0.05, min(deadlines) - time.monotonic())


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (Ray's run to many lines), or its type's name."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

"""The scheduler: deals work units (shards) to inference actors.

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
- Whole: a result that does not hold exactly one outcome (prediction row or error row) per
  sample of its shard is a failed attempt (`check_whole`), never yielded.
- Honest at the end: when no actor is left and none can come back, the shards not
  run are left in `unfinished`, never returned as failed: the driver does not commit
  them, and `--resume` runs them.
- Elastic (with an `ActorFleet`, jobs/placement.py): actors that become ready mid-run join
  and take queued shards at once; while shards wait the pool is asked for more; when the
  queue is empty, pending actors are cancelled and idle ones released.
- Ahead of stragglers (`speculation`): with the queue empty, a shard running longer than
  `speculation_factor` x the median shard time gets a copy on an idle actor. The first
  whole result is yielded; the other copy's is dropped when it comes (or never waited
  for): each shard is yielded exactly once.

What travels is sample ids and file names; actors read the files themselves.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import Counter, deque
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


@dataclass(frozen=True)
class _Run:
    """A shard running on actor `a` since `started`; `copy`: a speculative copy."""

    a: int
    shard: Shard
    started: float
    copy: bool = False


@dataclass
class _Recovery:
    """An actor being waited for: a probe in flight, or the time to send the next one."""

    deadline: float
    old_pid: int | None
    probe: Any = None
    next_probe: float = 0.0


@dataclass(frozen=True)
class RetryPolicy:
    """When a shard or an actor is given up.

    - a shard whose own run fails (an error in the actor, a timeout) runs at most
      `max_attempts` times, then its samples become error rows;
    - a shard in flight on `max_losses` lost actors is given up as transient (`--resume`
      runs it): the losses say nothing about its samples, but a shard that takes every actor
      down with it must not take the whole cluster;
    - an actor whose shards fail `max_consecutive_failures` times in a row is retired.
    """

    max_attempts: int = 3
    max_losses: int = 6
    max_consecutive_failures: int = 3

    def retry(self, attempts: int) -> bool:
        return attempts < self.max_attempts

    def requeue_after_loss(self, losses: int) -> bool:
        return losses < self.max_losses

    def retire(self, failures_in_a_row: int) -> bool:
        return failures_in_a_row >= self.max_consecutive_failures


@dataclass(frozen=True)
class Speculation:
    """When a straggling shard gets a copy: the queue is empty, an actor is idle, at least
    three shards have finished, and the shard has run longer than `factor` x their median
    time. One copy per shard at most."""

    enabled: bool = False
    factor: float = 1.5

    def limit(self, durations: Sequence[float]) -> float | None:
        """Seconds a shard may run before it gets a copy (None: not yet known, or off)."""
        if not self.enabled or len(durations) < 3:
            return None
        return self.factor * statistics.median(durations)

    def stragglers(self, running: Iterable[_Run], limit: float, now: float) -> list[_Run]:
        """Runs past `limit` whose shard has no copy yet, the oldest first."""
        running = list(running)
        copies = Counter(r.shard.index for r in running)
        return [r for r in sorted(running, key=lambda r: r.started)
                if copies[r.shard.index] == 1 and now - r.started > limit]

    def next_check(self, running: Iterable[_Run], limit: float) -> float | None:
        """The monotonic time the next of `running` (without a copy) becomes a straggler."""
        running = list(running)
        copies = Counter(r.shard.index for r in running)
        later = [r.started + limit for r in running if copies[r.shard.index] == 1]
        return min(later) if later else None


class ShardScheduler:
    """Feeds shards to actors and yields their results as they finish.

    >>> scheduler = ShardScheduler(actors, ["actor-0", "actor-1"])
    >>> for result in scheduler.run(make_shards(samples, 16)):
    ...     commit(result)
    >>> scheduler.unfinished  # shards no actor was left to run

    `pool`: an ActorFleet whose actors join as they become ready (None: only `actors`);
    `actor_wait_s`: how long shards wait with no actor alive for one to join.
    """

    def __init__(self, actors: Sequence[Any], names: Sequence[str], in_flight: int = 2,
                 max_attempts: int = 3, shard_timeout_s: float | None = None,
                 max_consecutive_failures: int = 3, restart_wait_s: float = 120.0,
                 max_losses: int = 6, pool: Any = None, actor_wait_s: float = 600.0,
                 speculation: bool = False, speculation_factor: float = 1.5) -> None:
        if not actors:
            raise ValueError("no actors to run on")
        self.pool = pool
        self.actor_wait_s = actor_wait_s
        self.speculation = Speculation(speculation, speculation_factor)
        self.policy = RetryPolicy(max_attempts, max_losses, max_consecutive_failures)
        self.actors: list[Any] = []
        self.names: list[str] = []
        self.in_flight = in_flight
        self.shard_timeout_s = shard_timeout_s
        self.restart_wait_s = restart_wait_s
        self.shards_per_actor: dict[str, int] = {}
        self.requeued = 0
        self.restarts = 0
        self.retired: list[str] = []
        self.released: list[str] = []
        self.unfinished: list[Shard] = []
        self.speculated = 0  # copies started
        self.speculative_wins = 0  # shards whose copy finished first
        self.dropped_copies = 0  # results that came after their shard's first
        #: per shard run: {shard, actor, start_s, end_s, outcome, copy}, seconds from the run's start
        self.timeline: list[dict[str, Any]] = []
        #: when each actor joined, seconds from the run's start (0: there from the start)
        self.joined: dict[str, float] = {}
        # run state
        self._queue: deque[Shard] = deque()
        self._attempts: dict[int, int] = {}
        self._losses: dict[int, int] = {}
        self._running: dict[Any, _Run] = {}
        self._abandoned: dict[Any, _Run] = {}  # copies whose shard another copy already finished
        self._done: set[int] = set()
        self._durations: list[float] = []
        self._load: list[int] = []
        self._failures: list[int] = []
        self._ready: set[int] = set()
        self._recovering: dict[int, _Recovery] = {}
        self._t0, self.started_at = time.monotonic(), time.time()  # the timeline's zero
        self._starved_since: float | None = None
        for actor, name in zip(actors, names):
            self.add(actor, name)

    def add(self, actor: Any, name: str) -> None:
        """An actor that joins (its model loaded): it gets shards from the next deal on."""
        self.actors.append(actor)
        self.names.append(name)
        self.shards_per_actor[name] = 0
        self._load.append(0)
        self._failures.append(0)
        self._ready.add(len(self.actors) - 1)
        self.joined[name] = max(0.0, round(time.monotonic() - self._t0, 3))

    def run(self, shards: Iterable[Shard]) -> Iterator[ShardResult | FailedShard]:
        self._t0, self.started_at = time.monotonic(), time.time()
        self.joined = dict.fromkeys(self.joined, 0.0)  # those given before the run
        self._queue.extend(shards)
        self._fill()
        self._scale()
        while self._running or (self._queue and (self._recovering or self._may_get_actors())):
            probes = {r.probe: a for a, r in self._recovering.items() if r.probe is not None}
            joining = set(self.pool.pending_refs()) if self.pool else set()
            refs = list(self._running) + list(probes) + list(joining) + list(self._abandoned)
            timeout = self._wait_timeout()
            if refs:
                ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
            else:
                time.sleep(timeout or PROBE_INTERVAL_S)
                ready = []
            for ref in ready:
                if ref in probes:
                    self._probed(probes[ref], ref)
                elif ref in joining:
                    self._join(ref)
                elif ref in self._abandoned:
                    self._dropped(ref)
                else:
                    yield from self._finish(ref)
            yield from self._expire()
            self._advance_recoveries()
            self._fill()
            self._speculate()
            self._scale()
        if self._queue:
            self.unfinished = list(self._queue)
            self._queue.clear()
            log.error("no inference actor is left alive; %d shards not run", len(self.unfinished))

    def counts(self) -> dict[str, Any]:
        """What the run did to its shards and actors, for run.json's `counts`."""
        return {"shards_requeued": self.requeued, "shards_unfinished": len(self.unfinished),
                "actor_restarts": self.restarts, "actors_retired": list(self.retired),
                "actors_released": list(self.released), "shards_speculated": self.speculated,
                "speculative_wins": self.speculative_wins, "copies_dropped": self.dropped_copies}

    def timeline_record(self) -> dict[str, Any]:
        """run.json's `timeline`: per shard run, seconds from `started` (epoch seconds), and
        when each actor joined (0: there from the start)."""
        return {"started": self.started_at, "runs": self.timeline, "joined": self.joined}

    # -- steps -------------------------------------------------------------------------
    def _fill(self) -> None:
        """Give queued shards to the least loaded ready actors, up to `in_flight` each."""
        for a in sorted(self._ready, key=lambda i: self._load[i]):
            while self._queue and self._load[a] < self.in_flight:
                shard = self._queue.popleft()
                attempt = self._attempts[shard.index] = self._attempts.get(shard.index, 0) + 1
                self._dispatch(a, shard, not self.policy.retry(attempt))

    def _dispatch(self, a: int, shard: Shard, final_attempt: bool, copy: bool = False) -> None:
        ref = self.actors[a].process.remote(shard.index, shard.samples, final_attempt)
        self._running[ref] = _Run(a, shard, time.monotonic(), copy)
        self._load[a] += 1

    def _finish(self, ref: Any) -> Iterator[ShardResult | FailedShard]:
        run = self._running.pop(ref)
        a, shard = run.a, run.shard
        self._load[a] -= 1
        twins = [r for r, other in self._running.items() if other.shard.index == shard.index]
        try:
            result: ShardResult = ray.get(ref)
            check_whole(result, shard)
        except RayActorError as exc:
            # The actor was lost (killed, crashed, its node gone): not this shard's fault.
            self._note(run, "lost")
            if twins:  # its other copy goes on
                if not run.copy:
                    self._attempts[shard.index] -= 1  # not an attempt of its own
                log.warning("actor %s lost while running a copy of shard %d (%s)", self.names[a], shard.index,
                            type(exc).__name__)
                self._recover(a)
                return
            yield from self._lost(a, shard, exc)
            return
        except Exception as exc:  # noqa: BLE001 - the actor's own error (RayTaskError), or a hang
            reason = f"actor {self.names[a]} failed on shard {shard.index}: {type(exc).__name__}: {first_line(exc)}"
            log.warning("%s; %s", reason, "its other copy goes on" if twins else "re-queueing the shard")
            self._note(run, "failed")
            self._failures[a] += 1
            if self.policy.retire(self._failures[a]):
                self._retire(a, f"{self._failures[a]} shards failed in a row")
            elif isinstance(exc, RequestTimeout):
                self._restart(a)  # a hung request leaves its slot stuck: start the actor afresh
            if not twins:
                yield from self._retry(shard, reason)
        else:
            self._note(run, "ok")
            self._failures[a] = 0
            self._done.add(shard.index)
            self._durations.append(time.monotonic() - run.started)
            self.speculative_wins += run.copy
            for twin in twins:  # the slower copy: its result is dropped when it comes
                self._abandoned[twin] = self._running.pop(twin)
            self.shards_per_actor[self.names[a]] += 1
            yield result

    def _dropped(self, ref: Any) -> None:
        """A copy whose shard was already yielded came back: its result is dropped (its
        failure still tells of its actor's health)."""
        run = self._abandoned.pop(ref)
        self._load[run.a] -= 1
        self.dropped_copies += 1
        self._note(run, "dropped")
        try:
            ray.get(ref)
        except RayActorError:
            self._recover(run.a)
        except RequestTimeout:
            self._restart(run.a)
        except Exception:  # noqa: BLE001 - the shard is done; the actor's next shards tell more
            pass

    def _lost(self, a: int, shard: Shard, exc: BaseException) -> Iterator[FailedShard]:
        self._attempts[shard.index] -= 1  # not an attempt of its own
        losses = self._losses[shard.index] = self._losses.get(shard.index, 0) + 1
        log.warning("actor %s lost while running shard %d (%s); re-queueing it", self.names[a], shard.index,
                    type(exc).__name__)
        self._recover(a)
        if not self.policy.requeue_after_loss(losses):
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
        for ref, run in list(self._running.items()):
            a, shard = run.a, run.shard
            if now - run.started <= self.shard_timeout_s:
                continue
            self._running.pop(ref)
            self._load[a] -= 1
            self._note(run, "timed out")
            twins = any(other.shard.index == shard.index for other in self._running.values())
            reason = f"shard {shard.index} on actor {self.names[a]} timed out after {self.shard_timeout_s:.0f}s"
            log.warning("%s; restarting the actor and re-queueing the shard", reason)
            self._failures[a] += 1
            if self.policy.retire(self._failures[a]):
                self._retire(a, f"{self._failures[a]} shards failed in a row")
            else:
                self._restart(a)
            if not twins:
                yield from self._retry(shard, reason)

    # -- the actors: joining, straggling, leaving --------------------------------------
    def _join(self, ref: Any) -> None:
        joined = self.pool.take(ref)
        if joined is None:
            return
        handle, name, info = joined
        self.add(handle, name)
        log.info("actor %s joined on node %s (%d up, %d pending)", name, str(info.get("node_id"))[-8:],
                 len(self._ready) + len(self._recovering), self.pool.pending)

    def _speculate(self) -> None:
        """Copies of straggling shards on idle actors, once the queue is empty (`Speculation`)."""
        limit = self.speculation.limit(self._durations)
        if limit is None or self._queue:
            return
        idle = [a for a in self._ready if self._load[a] == 0]
        for run in self.speculation.stragglers(self._running.values(), limit, time.monotonic()):
            others = [a for a in idle if a != run.a]
            if not others:
                break
            a = others[0]
            idle.remove(a)
            self.speculated += 1
            log.info("shard %d has run %.1f s on actor %s (median %.1f s): a copy starts on actor %s",
                     run.shard.index, time.monotonic() - run.started, self.names[run.a],
                     limit / self.speculation.factor, self.names[a])
            self._dispatch(a, run.shard, final_attempt=False, copy=True)

    def _scale(self) -> None:
        """With a pool: more actors while shards wait; with none waiting, pending ones cancelled
        and idle ones released (those speculation may still use kept)."""
        if self.pool is None:
            return
        alive = len(self._ready) + len(self._recovering)
        self._starved_since = (self._starved_since or time.monotonic()) if self._queue and not alive else None
        if self._queue:
            spare = sum(self.in_flight - self._load[a] for a in self._ready)
            self.pool.grow(-(-(len(self._queue) - spare) // self.in_flight), alive)
            return
        if not self.pool.placement.growable or not self._running:
            return  # (nothing running: the run ends, and the driver ends every actor)
        self.pool.cancel_pending()
        idle = [a for a in sorted(self._ready) if self._load[a] == 0]
        copies = Counter(run.shard.index for run in self._running.values())
        keep = sum(1 for n in copies.values() if n == 1) if self.speculation.enabled else 0
        for a in idle[keep:]:
            self._ready.discard(a)
            self.released.append(self.names[a])
            log.info("actor %s released: no queued work left", self.names[a])
            self.pool.release(self.actors[a], self.names[a])

    def _may_get_actors(self) -> bool:
        """Shards wait with no actor alive: is one pending or may one be asked for, in time?"""
        if self.pool is None or not (self.pool.pending or self.pool.placement.growable):
            return False
        if self._starved_since is not None and time.monotonic() - self._starved_since > self.actor_wait_s:
            log.error("no inference actor joined within %g s", self.actor_wait_s)
            return False
        return True

    def _note(self, run: _Run, outcome: str) -> None:
        self.timeline.append({"shard": run.shard.index, "actor": self.names[run.a], "copy": run.copy,
                              "start_s": round(run.started - self._t0, 3),
                              "end_s": round(time.monotonic() - self._t0, 3), "outcome": outcome})

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
        if not self.policy.retry(self._attempts.get(shard.index, 0)):
            yield FailedShard(shard, reason, self._attempts[shard.index])
        else:
            self.requeued += 1
            self._queue.appendleft(shard)

    def _wait_timeout(self) -> float | None:
        deadlines = []
        now = time.monotonic()
        if self.shard_timeout_s is not None and self._running:
            deadlines.append(min(r.started for r in self._running.values()) + self.shard_timeout_s)
        if self.pool is not None and self._queue:
            deadlines.append(now + 1.0)  # look for room to grow into
            if self._starved_since is not None:
                deadlines.append(self._starved_since + self.actor_wait_s)
        idle = any(self._load[a] == 0 for a in self._ready)
        limit = self.speculation.limit(self._durations)
        if limit is not None and idle and not self._queue:
            straggles = self.speculation.next_check(self._running.values(), limit)
            if straggles is not None:
                deadlines.append(max(now + 0.05, straggles))
        for recovery in self._recovering.values():
            deadlines.append(recovery.deadline)
            if recovery.probe is None:
                deadlines.append(recovery.next_probe)
        if not deadlines:
            return None
        return max(0.05, min(deadlines) - now)


class IncompleteResult(RuntimeError):
    """A shard's result that does not give each of its samples exactly one outcome."""


def check_whole(result: Any, shard: Shard) -> None:
    """Raise `IncompleteResult` unless `result` (a ShardResult) holds exactly one prediction row or
    error row per sample of `shard` and nothing else: the commit never takes a shard with a
    sample lost or doubled."""
    if not isinstance(result, ShardResult):
        raise IncompleteResult(f"shard {shard.index} came back as {type(result).__name__}, not a ShardResult")
    got = Counter(result.rows.column("sample_id").to_pylist() + result.errors.column("sample_id").to_pylist())
    wanted = Counter(s.sample_id for s in shard.samples)
    if got != wanted:
        missing, extra = sorted((wanted - got).elements()), sorted((got - wanted).elements())
        raise IncompleteResult(f"shard {shard.index} came back with {sum(got.values())} outcomes for "
                               f"{len(shard.samples)} samples (missing {missing[:3]}, unexpected {extra[:3]})")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (Ray's run to many lines), or its type's name."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

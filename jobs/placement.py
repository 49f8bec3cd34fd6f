"""Actor placement: what one inference actor asks of the cluster, how many to ask for, and
the pool that asks for them as the job goes.

- Embedded Ray (this host only) is fixed: the actors that fit are started once, and work
  starts when all have their model, as before.
- A cluster the job joined (`--address`, a Ray Job) may grow: the pool asks for what fits in
  the nodes' free resources now plus pending actors beyond that, which an autoscaler sees as
  demand and answers with nodes; work starts with the first ready actor, and actors that
  become ready later join the scheduler. When no queued work is left, pending actors are
  cancelled and the stage releases idle ones, so the autoscaler can scale down before the job
  ends.

>>> placement = plan_placement(cfg, growable=True)
>>> pool = ActorFleet(start_one, placement)
>>> ready = pool.wait_first(timeout_s=600)   # [(handle, name, info)]
>>> pool.grow(wanted=4, alive=len(ready))    # while shards wait: ask for more
>>> pool.pending_refs()                       # ray.wait on these; pool.take(ref) when one is ready
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rayinfer.actors.actor import InferenceActor
from rayinfer.actors.backends import REGISTRY, candidates, device_for, settled
from rayinfer.datasets.base import ModelFamily, Dataset, SetupError
from rayinfer.jobs.config import JobConfig

log = logging.getLogger(__name__)

#: Seconds between two looks at the cluster's free resources while shards wait.
LOOK_EVERY_S = 1.0


@dataclass(frozen=True)
class ActorShape:
    """What one inference actor asks for: CPUs, GPUs, and one unit of a custom resource."""

    cpus: float
    gpus: float = 0.0
    resource: str | None = None

    def demand(self) -> dict[str, float]:
        out = {"CPU": self.cpus, "GPU": self.gpus, **({self.resource: 1.0} if self.resource else {})}
        return {k: v for k, v in out.items() if v > 0}

    def fits(self, free: dict[str, float]) -> int:
        """How many such actors `free` resources hold (an actor asking for nothing: any number)."""
        counts = [int(free.get(k, 0.0) / v + 1e-9) for k, v in self.demand().items()]
        return min(counts) if counts else 1 << 30

    def options(self) -> dict[str, Any]:
        """`ray.remote(...).options(...)` for it."""
        return {"num_cpus": self.cpus, "num_gpus": self.gpus,
                "resources": {self.resource: 1} if self.resource else None}

    def __str__(self) -> str:
        return _resources(self.demand())


@dataclass(frozen=True)
class Placement:
    """The actors of a job: `ask` at once, up to `maximum` (None: as many as the cluster gives),
    and whether more may be asked for as the job goes."""

    shape: ActorShape
    ask: int
    maximum: int | None
    growable: bool


def plan_placement(cfg: JobConfig, growable: bool) -> Placement:
    """How many actors of what shape; see the module docstring.

    On a cluster that may grow, an actor no alive node offers is no error: it is asked for
    and waited for (`--actor-wait`), with `--cpus-per-actor` (default 1) CPUs.
    """
    resource = actor_resource(cfg)
    if not growable:
        n, cpus, gpus = plan_actors(cfg)
        return Placement(ActorShape(cpus, gpus, resource), n, n, False)
    maximum = cfg.actors or cfg.max_actors or None
    try:
        n, cpus, gpus = plan_actors(cfg)
    except SetupError as exc:
        gpus = cfg.gpus_per_actor if device_for(cfg) == "gpu" else 0.0
        shape = ActorShape(cfg.cpus_per_actor or 1.0, gpus, resource)
        log.info("%s now; asking the cluster for actors of %s (an autoscaler brings nodes up)", exc, shape)
        n = 0
    else:
        shape = ActorShape(cpus, gpus, resource)
    ask = cfg.actors or max(n, cfg.min_actors, 1)
    return Placement(shape, min(ask, maximum) if maximum else ask, maximum, True)


def actor_resource(cfg: JobConfig) -> str | None:
    """The custom Ray resource one actor takes: `--resource` where given, else the one the
    runtime backend's device needs (`resource(cfg)`: an NPU), else None."""
    from rayinfer.actors.backends import resource_for

    return cfg.resource or resource_for(cfg)


def _options_text(cfg: JobConfig) -> str:
    """The runtime options set, as their flags: `--providers cuda,cpu`."""
    from rayinfer.actors.backends import option_keys

    flat = {where: key for key, where in option_keys().items()}
    return " ".join(f"--{flat[(name, k)].replace('_', '-')} {','.join(map(str, v)) if isinstance(v, tuple) else v}"
                    for name, values in cfg.runtime_options.items() for k, v in values.items())


def plan_actors(cfg: JobConfig) -> tuple[int, float, float]:
    """(actors, cpus per actor, gpus per actor) from the alive nodes' resources."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    if not nodes:
        raise SetupError("the Ray cluster has no alive node with CPUs")
    resource = actor_resource(cfg)
    if resource:
        units = sum(n["Resources"].get(resource, 0) for n in nodes)
        if units < 1:
            how = "" if cfg.resource else f" (the {cfg.runtime} runtime's device needs it; --resource names another)"
            raise SetupError(f"the Ray cluster has no {resource!r} resource{how}")
        actors = cfg.actors or int(units)
        per_node = -(-actors // len(nodes))
        return actors, cfg.cpus_per_actor or min(n["Resources"]["CPU"] for n in nodes) / per_node, 0.0
    if device_for(cfg) == "gpu":
        gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
        if gpus < cfg.gpus_per_actor or gpus == 0:
            raise SetupError(f"{_options_text(cfg) or 'the runtime'} need a GPU, but the Ray cluster has {gpus:g} GPUs")
        actors = cfg.actors or int(gpus // cfg.gpus_per_actor)
        # each GPU actor gets its share of its node's CPUs for decoding
        per_gpu = min(n["Resources"]["CPU"] / n["Resources"]["GPU"] for n in nodes if n["Resources"].get("GPU"))
        return actors, cfg.cpus_per_actor or max(1.0, float(int(per_gpu * cfg.gpus_per_actor))), cfg.gpus_per_actor
    node_cpus = min(n["Resources"]["CPU"] for n in nodes)
    if cfg.actors:
        per_node = -(-cfg.actors // len(nodes))
        return cfg.actors, cfg.cpus_per_actor or node_cpus / per_node, 0.0
    cpus = cfg.cpus_per_actor or node_cpus
    actors = sum(int(n["Resources"]["CPU"] // cpus) for n in nodes)
    return max(1, actors), cpus, 0.0


def describe_cluster() -> str:
    """What the cluster offers, for an error: its alive nodes' resources, grouped."""
    import ray

    kinds: dict[str, int] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            text = _resources(node["Resources"])
            kinds[text] = kinds.get(text, 0) + 1
    if not kinds:
        return "no alive node"
    return "alive nodes: " + ", ".join(f"{n} x {text}" for text, n in kinds.items())


def _resources(resources: dict[str, float]) -> str:
    """{CPU: 1, sim_device: 1}: the resources a person reads (no memory, no node: labels)."""
    shown = {k: v for k, v in resources.items()
             if not k.startswith("node:") and k not in ("memory", "object_store_memory") and v}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"


class ActorFleet:
    """The inference actors a job asked for: pending until Ray places them and they have
    their model, then handed out once by `take` / `wait_first`. It knows nothing of shards.

    Args:
        start_one: makes one actor handle from its name (`ray.remote(...).options(...).remote(...)`).
        placement: what to ask for (`plan_placement`).
    """

    def __init__(self, start_one: Callable[[str], Any], placement: Placement) -> None:
        self.start_one = start_one
        self.placement = placement
        self.asked = 0
        self.cancelled = 0
        self.released: list[str] = []
        self.infos: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, dict[str, Any]] = {}  # of released actors, taken before they went
        self._pending: dict[Any, tuple[Any, str]] = {}  # info() ref -> (handle, name)
        self._next_look = 0.0

    # -- asking ------------------------------------------------------------------------
    def ask(self, k: int) -> None:
        for _ in range(max(0, k)):
            name = f"actor-{self.asked}"
            self.asked += 1
            handle = self.start_one(name)
            self._pending[handle.info.remote()] = (handle, name)

    def grow(self, wanted: int, alive: int) -> None:
        """Shards wait that `wanted` more actors could take (`alive`: actors the stage has).

        Asks for what fits in the free resources now, plus pending ones beyond that (as many
        as are alive: the demand doubles while nodes keep coming), up to the maximum. Looks
        at the cluster at most every LOOK_EVERY_S."""
        if not self.placement.growable or wanted <= 0:
            return
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + LOOK_EVERY_S
        import ray

        room = wanted if self.placement.maximum is None else self.placement.maximum - alive - len(self._pending)
        fits = self.placement.shape.fits(ray.available_resources())
        k = min(wanted - len(self._pending), room, fits + max(1, alive) - len(self._pending))
        if k > 0:
            log.info("asking for %d more actor%s (%d up, %d pending)", k, "" if k == 1 else "s", alive,
                     len(self._pending))
            self.ask(k)

    # -- taking ------------------------------------------------------------------------
    def pending_refs(self) -> list[Any]:
        return list(self._pending)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def take(self, ref: Any) -> tuple[Any, str, dict[str, Any]] | None:
        """The actor whose `info()` is `ref`, now ready; None when it failed to start (logged)."""
        import ray

        handle, name = self._pending.pop(ref)
        try:
            info = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - its constructor failed, or its node went
            log.warning("actor %s did not start: %s", name, _last_line(exc))
            ray.kill(handle)
            return None
        self.infos[name] = info
        return handle, name, info

    def wait_first(self, timeout_s: float) -> list[tuple[Any, str, dict[str, Any]]]:
        """The actors to start work with: all of a fixed pool, the first ready of a growable one.

        Raises SetupError when an actor fails to start, or none is ready within `timeout_s`
        (naming what an actor asks for and what the cluster offers)."""
        import ray

        want = 1 if self.placement.growable else len(self._pending)
        deadline = time.monotonic() + timeout_s
        ready: list[tuple[Any, str, dict[str, Any]]] = []
        while len(ready) < want:
            refs, _ = ray.wait(self.pending_refs(), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not refs:
                shape = self.placement.shape
                self.shutdown([h for h, _, _ in ready])
                raise SetupError(f"no inference actor could be placed within {timeout_s:g} s (--actor-wait): each "
                                 f"asks for {shape}; the cluster offers {describe_cluster()}")
            handle, name = self._pending[refs[0]]
            try:
                ray.get(refs[0])
            except Exception as exc:  # noqa: BLE001 - the actor's constructor failed
                self.shutdown([h for h, _, _ in ready])
                raise SetupError(f"inference actors failed to start: {_last_line(exc)}") from None
            ready.append(self.take(refs[0]))  # type: ignore[arg-type]
        return ready

    # -- letting go --------------------------------------------------------------------
    def cancel_pending(self) -> None:
        """No more work for actors not yet ready: cancel them (an autoscaler's demand goes)."""
        import ray

        if self._pending:
            log.info("cancelling %d pending actor%s: no queued work left", len(self._pending),
                     "" if len(self._pending) == 1 else "s")
        for handle, _ in self._pending.values():
            ray.kill(handle)
        self.cancelled += len(self._pending)
        self._pending.clear()

    def release(self, handle: Any, name: str) -> None:
        """An idle actor the job needs no more: its stats kept, then ended (its node can go)."""
        self.stats[name] = actor_stats(handle)
        self.stats[name]["released_at"] = time.time()
        self.released.append(name)
        import ray

        ray.kill(handle)

    def shutdown(self, handles: list[Any]) -> None:
        import ray

        self.cancel_pending()
        for h in handles:
            ray.kill(h)

    def record(self) -> dict[str, Any]:
        """run.json's `pool`."""
        p = self.placement
        return {"growable": p.growable, "shape": p.shape.demand(), "asked_at_start": p.ask, "maximum": p.maximum,
                "asked": self.asked, "ready": len(self.infos), "cancelled": self.cancelled,
                "released": list(self.released)}


def open_pool(cfg: JobConfig, dataset: Dataset, family: ModelFamily, growable: bool) -> tuple[ActorFleet, dict[str, Any] | None]:
    """Plan the actors, choose the runtime (`--runtime auto`), and ask for the first ones:
    each gets the dataset reader and family the driver built and checked (so no actor
    re-reads the annotations). Returns the pool and the runtime probe's record."""
    import uuid

    import ray

    placement = plan_placement(cfg, growable)
    cfg, probe = resolve_runtime(cfg, placement.shape, cfg.actor_wait_s, growable)
    remote = ray.remote(InferenceActor)
    run_tag = uuid.uuid4().hex[:8]

    def start_one(name: str) -> Any:
        return remote.options(name=f"rayinfer-{run_tag}-{name}", **placement.shape.options(),
                              max_restarts=cfg.max_actor_restarts, max_task_retries=0,
                              max_concurrency=cfg.in_flight + 2,
                              scheduling_strategy="SPREAD").remote(cfg, name, dataset, family, dict(REGISTRY))

    log.info("starting %d inference actor%s (each loads the model)%s", placement.ask,
             "" if placement.ask == 1 else "s", "; more as shards wait and nodes join" if growable else "")
    pool = ActorFleet(start_one, placement)
    pool.ask(placement.ask)
    return pool, probe


def actor_stats(handle: Any, timeout_s: float = 30.0) -> dict[str, Any]:
    import ray

    try:
        return ray.get(handle.stats.remote(), timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - a dead actor has no stats
        return {"error": type(exc).__name__}


def _last_line(exc: BaseException) -> str:
    """The cause in a Ray error: its last non-empty line (Ray puts the traceback first)."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def resolve_runtime(cfg: JobConfig, shape: ActorShape, timeout_s: float,
                    growable: bool = False) -> tuple[JobConfig, dict[str, Any] | None]:
    """One runtime for every actor of a job, so that a sample's prediction never depends on
    which actor ran it (runtimes differ in the last digits).

    Under `--runtime auto` with several installed CPU runtimes, the choice is measured
    once, in a Ray task with one actor's resources (so on an actor's kind of node, with its
    CPUs), and the actors get the chosen runtime by name. Where the actors can only run on
    this host (a one-node cluster that is this one and will not grow), a choice measured
    before is read here instead, without a task (0.36 s of a 5 s job: a worker importing
    both runtimes to read one file). Returns the config the actors get and the probe's
    record (None when nothing had to be chosen).
    """
    import ray

    if cfg.runtime != "auto" or settled(candidates(cfg.model, "auto", cfg), cfg):
        return cfg, None
    cached = None if growable else _remembered_here(cfg, shape)
    if cached:
        return dataclasses.replace(cfg, runtime=cached["name"]), cached
    log.info("choosing the runtime: measuring each installed one on the model for a few seconds")
    task = ray.remote(_probe_runtime).options(**shape.options())
    try:
        probe = ray.get(task.remote(cfg, dict(REGISTRY)), timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - the task's SetupError, or the cluster's
        raise SetupError(f"choosing the runtime for {cfg.model} failed: {_last_line(exc)}") from None
    return dataclasses.replace(cfg, runtime=probe["name"]), probe


def _remembered_here(cfg: JobConfig, shape: ActorShape) -> dict[str, Any] | None:
    """The probe's record cached on this host for an actor of `shape`, where the cluster
    is this one machine and holds such an actor; else None."""
    import ray

    from rayinfer.actors.backends import remembered_runtime
    from rayinfer.actors.model import available_cpus, counted_cpus

    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        here = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - a driver with no node of its own (Ray Client): the task asks
        return None
    if len(nodes) != 1 or nodes[0].get("NodeID") != here:
        return None
    if not shape.fits(nodes[0].get("Resources") or {}):
        return None
    # the CPUs an actor of this shape counts (actors/model.available_cpus inside it)
    cpus = counted_cpus(shape.cpus) if shape.cpus else available_cpus()
    runtime = remembered_runtime(cfg, cpus)
    return runtime.record() if runtime else None


def _probe_runtime(cfg: JobConfig, backends: dict[str, str] | None = None) -> dict[str, Any]:
    """(A Ray task) the runtime an actor with these CPUs would choose, and its probe."""
    from rayinfer.actors.backends import choose_runtime, register
    from rayinfer.actors.model import available_cpus

    register(backends)

    return choose_runtime(cfg, available_cpus()).record()

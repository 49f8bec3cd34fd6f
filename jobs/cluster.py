"""The cluster side of a job: connecting to Ray (or starting it embedded, loopback only),
shipping the package to the cluster's workers, and placing the inference actors.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from rayinfer.actors.actor import InferenceActor
from rayinfer.actors.backends import candidates, device_for, settled
from rayinfer.datasets.base import Adapter, Dataset, SetupError
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.loader import first_line

log = logging.getLogger(__name__)

#: What a job needs to import: these packages' Python files, and the package data they read.
PACKAGES = ("actors", "datasets", "jobs")
PACKAGE_DATA = ("jobs/demo_models/*.onnx",)


def connect_ray(cfg: JobConfig) -> bool:
    """Join the cluster at `cfg.address`, the one of a Ray Job, or start Ray embedded.

    Returns True when this process started Ray (and must shut it down).
    """
    import ray

    if ray.is_initialized():
        return False
    # Ray's own start-up chatter stays out of the user's terminal unless -v (debug) is on.
    ray_level = logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.ERROR
    kwargs: dict[str, Any] = {"logging_level": ray_level, "log_to_driver": False, "namespace": "rayinfer"}
    in_job = bool(os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"))
    if cfg.address:
        log.info("connecting to the Ray cluster at %s", cfg.address)
        _check_reachable(cfg.address)
        _token_auth_if_token_found()
        quiet_packaging()
        kwargs["runtime_env"] = shipped_runtime_env()
        try:
            ray.init(address=cfg.address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - unreachable, refused, timed out
            raise SetupError(f"cannot connect to the Ray cluster at {cfg.address}: {type(exc).__name__}: {first_line(exc)}") from None
        return False
    if in_job:
        ray.init(**kwargs)
        return False
    log.info("starting Ray on this machine")
    try:
        init_local_ray(include_dashboard=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray did not start (in time)
        raise SetupError(f"Ray did not start here: {type(exc).__name__}: {first_line(exc)}") from None
    return True


def quiet_packaging() -> None:
    """Ray's lines about shipping the package ("Creating a file package ...", "Uploading
    package gcs://...") only with -v. Their modules set their loggers to INFO when imported,
    so this runs after importing them."""
    if log.isEnabledFor(logging.DEBUG):
        return
    import importlib

    for name in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
        importlib.import_module(name)  # sets its logger's level
        logging.getLogger(name).setLevel(logging.WARNING)


def _token_auth_if_token_found() -> None:
    """Ray's token authentication for a client of an existing cluster, as `ray` CLI commands
    and `rayinfer submit` do it: with RAY_AUTH_MODE unset and a token found (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), use it. (`ray.init(address=...)` alone does not
    look, and a token cluster then refuses it after 20 s of InvalidAuthToken warnings.)"""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    if maybe_enable_token_auth_if_token_available(warn_if_disabled=False):
        log.info("using Ray's token authentication (token found)")


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A `host:port` address must answer a TCP connect (ray.init would retry for minutes)."""
    import socket

    if address in ("auto", "local") or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise SetupError(f"cannot connect to the Ray cluster at {address}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None


def init_local_ray(**kwargs: Any) -> None:
    """`ray.init()` starting a local Ray that listens on 127.0.0.1 only.

    Its workers run this interpreter and import the installed `rayinfer` package; no
    job-level `runtime_env` is given: one keeps Ray from using the workers it pre-starts,
    and each actor then waits for a fresh worker process (measured: 1.07 s vs 0.33 s to
    start two actors on 2 CPUs).
    """
    import ray
    from ray._private import ray_constants

    from rayinfer.jobs.reaper import watch

    # Loopback only. Ray binds its servers (GCS, raylet, workers, agents) to 127.0.0.1 only
    # when the node's address is exactly 127.0.0.1, and `ray.init` replaces a 127.0.0.1 it is
    # given by the machine's outward address unless multi-node clusters are off
    # (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0): read by Ray's own processes when they start,
    # and by this process's ray_constants when it was imported, so both are set for the call.
    env = {ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR: "0"}
    before = {k: os.environ.get(k) for k in env}
    cluster_before = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(env)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(**kwargs)
        # Ray's agents can outlive a driver killed with SIGKILL: a reaper ends them then.
        watch()
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_before
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def job_package() -> Path:
    """A fresh folder holding only what the job imports: `rayinfer/` with the Python files
    of the installed `rayinfer.actors`, `rayinfer.datasets`, `rayinfer.jobs` and the demo
    models, as a regular package (its own `__init__.py`), so on a worker it wins whole over
    any `rayinfer` the node's site-packages may hold.

    Models and data are read from the paths the job is given, on the cluster; nothing
    else of the project folder (data/, .env, virtualenvs, *.onnx of the user's) travels.
    """
    import importlib
    import shutil
    import tempfile

    dest = Path(tempfile.mkdtemp(prefix="rayinfer-package-")) / "rayinfer"
    for name in PACKAGES:
        source = Path(importlib.import_module(f"rayinfer.{name}").__file__).parent
        patterns = ["**/*.py"] + [p.split("/", 1)[1] for p in PACKAGE_DATA if p.startswith(f"{name}/")]
        for path in {p for pattern in patterns for p in source.glob(pattern)}:
            relative = path.relative_to(source)
            if path.suffix == ".py" and not (path.parent / "__init__.py").exists():
                continue  # a script beside the package (demo_models/train.py), not part of it
            (dest / name / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / name / relative)
    (dest / "__init__.py").write_text('"""rayinfer, as shipped with a job (see rayinfer.jobs.cluster.job_package)."""\n')
    return dest


def shipped_runtime_env() -> dict[str, Any]:
    """The `runtime_env` of a job sent to a cluster: the package travels as a `py_modules`
    entry, so the driver of a Ray Job and every worker import it, never site-packages."""
    return {"py_modules": [str(job_package())]}


def plan_actors(cfg: JobConfig) -> tuple[int, float, float]:
    """(actors, cpus per actor, gpus per actor) from the cluster's resources."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    if not nodes:
        raise SetupError("the Ray cluster has no alive node with CPUs")
    if cfg.resource:
        units = sum(n["Resources"].get(cfg.resource, 0) for n in nodes)
        if units < 1:
            raise SetupError(f"the Ray cluster has no {cfg.resource!r} resource")
        actors = cfg.actors or int(units)
        per_node = -(-actors // len(nodes))
        return actors, cfg.cpus_per_actor or min(n["Resources"]["CPU"] for n in nodes) / per_node, 0.0
    if device_for(cfg) == "gpu":
        gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
        if gpus < cfg.gpus_per_actor or gpus == 0:
            raise SetupError(f"providers {list(cfg.providers)} need a GPU, but the Ray cluster has {gpus:g} GPUs")
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


def start_actors(cfg: JobConfig, dataset: Dataset, adapter: Adapter) -> tuple[list[Any], list[str], list[dict[str, Any]]]:
    """Start the inference actors with the dataset reader and adapter the driver built and
    checked (so no actor re-reads the annotations) and wait until each has its model."""
    import ray

    n, cpus, gpus = plan_actors(cfg)
    cfg, probe = resolve_runtime(cfg, cpus, gpus)
    log.info("starting %d inference actor%s (each loads the model)", n, "" if n == 1 else "s")
    remote = ray.remote(InferenceActor)
    names = [f"actor-{i}" for i in range(n)]
    run_tag = uuid.uuid4().hex[:8]
    actors = [
        remote.options(name=f"rayinfer-{run_tag}-{name}", num_cpus=cpus, num_gpus=gpus, resources={cfg.resource: 1} if cfg.resource else None,
                       max_restarts=cfg.max_actor_restarts, max_task_retries=0,
                       max_concurrency=cfg.shards_in_flight + 2, scheduling_strategy="SPREAD").remote(cfg, name, dataset, adapter)
        for name in names
    ]
    try:
        infos = ray.get([a.info.remote() for a in actors], timeout=600)
    except Exception as exc:
        for a in actors:
            ray.kill(a)
        cause = str(exc).strip().splitlines()
        raise SetupError(f"inference actors failed to start: {cause[-1] if cause else exc}") from None
    log.info("%d actor%s ready, each with %.2g CPUs%s", n, "" if n == 1 else "s", cpus,
             f" and {gpus:g} GPUs" if gpus else "")
    if probe:
        for info in infos:  # what chose their runtime
            info["runtime"].update(probe=probe["probe"], probe_cached=probe["probe_cached"])
    return actors, names, infos


def resolve_runtime(cfg: JobConfig, cpus: float, gpus: float) -> tuple[JobConfig, dict[str, Any] | None]:
    """One runtime for every actor of a job, so that a sample's prediction never depends on
    which actor ran it (runtimes differ in the last digits; OpenVINO may compute in bf16).

    Under `--runtime auto` with several installed CPU runtimes, the choice is measured
    once, in a Ray task with one actor's resources (so on an actor's kind of node, with its
    CPUs), and the actors get the chosen runtime by name. Returns the config the actors get
    and the probe's record (None when nothing had to be chosen).
    """
    import ray

    if cfg.runtime != "auto" or settled(candidates(cfg.model, "auto"), cfg):
        return cfg, None
    log.info("choosing the runtime: measuring each installed one on the model for a few seconds")
    task = ray.remote(_probe_runtime).options(num_cpus=cpus, num_gpus=gpus,
                                              resources={cfg.resource: 1} if cfg.resource else None)
    try:
        probe = ray.get(task.remote(cfg), timeout=600)
    except Exception as exc:  # noqa: BLE001 - the task's SetupError, or the cluster's
        cause = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        raise SetupError(f"choosing the runtime for {cfg.model} failed: {cause[-1] if cause else exc}") from None
    return dataclasses.replace(cfg, runtime=probe["name"]), probe


def _probe_runtime(cfg: JobConfig) -> dict[str, Any]:
    """(A Ray task) the runtime an actor with these CPUs would choose, and its probe."""
    from rayinfer.actors.backends import open_model
    from rayinfer.actors.model import available_cpus

    return open_model(cfg, available_cpus()).runtime.record()

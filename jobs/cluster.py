"""The cluster side of a job: connecting to Ray (or starting it embedded, loopback only)
and shipping the package to the cluster's workers. Placing the actors: jobs/placement.py.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from rayinfer.datasets.base import SetupError
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.scheduler import first_line

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
    log.info("starting Ray here (embedded)")
    try:
        init_local_ray(include_dashboard=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray did not start (in time)
        raise SetupError(f"Ray did not start here: {type(exc).__name__}: {first_line(exc)}") from None
    return True


def may_grow(cfg: JobConfig) -> bool:
    """A cluster the job joined (--address, or a Ray Job's) may grow and shrink: its actors
    are asked for as the job goes (jobs/placement.py). Ray embedded here is fixed."""
    return bool(cfg.address or os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"))


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
    # the package's own __init__.py: the Python API (jobs/api/__init__.py)
    shutil.copy2(Path(importlib.import_module("rayinfer").__file__), dest / "__init__.py")
    return dest


def shipped_runtime_env() -> dict[str, Any]:
    """The `runtime_env` of a job sent to a cluster: the package travels as a `py_modules`
    entry, so the driver of a Ray Job and every worker import it, never site-packages."""
    return {"py_modules": [str(job_package())]}

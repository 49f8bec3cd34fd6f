"""`rayinfer submit`: the same job, sent to a cluster through Ray Jobs.

What travels with the job (as `py_modules`) is the package alone (`cluster.job_package()`:
the Python files of rayinfer.actors, .datasets and .jobs and the demo models), never the project
folder around it: no data, models, secrets (.env) or virtualenvs. The entrypoint is the
same `python -m rayinfer.jobs run ...` command with the flags that differ from the defaults.
Paths are made absolute: they must exist on the cluster's nodes (shared storage,
or the same layout on every node, as cluster.yaml sets up).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from rayinfer.jobs.cluster import shipped_runtime_env
from rayinfer.jobs.config import JobConfig, resolve_paths

log = logging.getLogger(__name__)

def entrypoint(cfg: JobConfig) -> str:
    """The `python -m rayinfer.jobs run ...` command line equivalent to `cfg`."""
    from rayinfer.jobs.options import flags

    default = JobConfig(task=cfg.task, data_root="", model="", output="")
    words = ["python", "-m", "rayinfer.jobs", "run", cfg.task]
    for o in flags():
        value, base = _get(cfg, o.key), _get(default, o.key)
        if value == base or o.key == "address":
            continue
        if o.parse is None:  # a switch: present when the value differs from the default
            words.append(o.flag)
            continue
        if isinstance(value, dict):
            text = json.dumps(value, separators=(",", ":"))
        elif isinstance(value, tuple):
            text = ",".join(map(str, value))
        else:
            text = str(value)
        words += [o.flag, text]
    words.append("--quiet")
    return " ".join(shlex.quote(w) for w in words)


def _get(cfg: JobConfig, key: str) -> object:
    value: object = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def auth_headers() -> dict[str, str]:
    """Ray's token for the Jobs API, where one exists (Ray >= 2.52 token authentication).

    Looked up as Ray does: RAY_AUTH_TOKEN, the file at RAY_AUTH_TOKEN_PATH, then
    ~/.ray/auth_token. Without one, requests go unauthenticated.
    """
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(dashboard: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(dashboard, headers=auth_headers())


def submit(cfg: JobConfig, dashboard: str) -> str:
    cfg = resolve_paths(cfg)
    jobs_api = client(dashboard)
    command = entrypoint(dataclasses.replace(cfg, address=None))
    job_id = jobs_api.submit_job(
        entrypoint=command,
        runtime_env=shipped_runtime_env(),
        metadata={"tool": "rayinfer", "task": cfg.task},
    )
    log.info("submitted %s to %s: %s", job_id, dashboard, command)
    return job_id


def follow(dashboard: str, job_id: str, timeout_s: float | None = None) -> int:
    """Stream the job's logs to stdout until it ends; return its exit code."""
    from ray.job_submission import JobStatus

    jobs_api = client(dashboard)

    async def tail() -> None:
        async for lines in jobs_api.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        asyncio.run(asyncio.wait_for(tail(), timeout_s))
    except asyncio.TimeoutError:
        log.error("stopped following %s after %ss; it may still be running", job_id, timeout_s)
        return 1
    deadline = time.monotonic() + 60
    while (status := jobs_api.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.monotonic() > deadline:
            return 1
        time.sleep(0.5)
    info = jobs_api.get_job_info(job_id)
    code = getattr(info, "driver_exit_code", None)
    if status == JobStatus.SUCCEEDED:
        return 0
    log.error("job %s %s: %s", job_id, status.value, info.message)
    return int(code) if code else 1


def submit_and_follow(cfg: JobConfig, dashboard: str, follow_logs: bool = True) -> int:
    job_id = submit(cfg, dashboard)
    sys.stdout.write(f"job {job_id} submitted to {dashboard}\n")
    return follow(dashboard, job_id) if follow_logs else 0

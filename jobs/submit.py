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

from rayinfer.datasets.base import SetupError
from rayinfer.jobs.config import JobConfig, resolve_paths

log = logging.getLogger(__name__)

def entrypoint(cfg: JobConfig) -> str:
    """The `python -m rayinfer.jobs run ...` command line equivalent to `cfg`."""
    from rayinfer.jobs.options import flags, runtime_flags, task_flags
    from rayinfer.jobs.tasks import get_task

    default = JobConfig(task=cfg.task, data_root="", model="", output="")
    task = get_task(cfg.task)
    backend_flags = runtime_flags()
    values = {**_values(cfg), **_values(task.options(cfg), "options."),
              **{o.key: cfg.runtime_option(o.key) for o in backend_flags}}
    defaults = {**_values(default), **_values(task.options(default), "options."),
                **{o.key: default.runtime_option(o.key) for o in backend_flags}}
    words = ["python", "-m", "rayinfer.jobs", "run", cfg.task]
    for o in flags() + backend_flags + task_flags():
        if o.key not in values or values[o.key] == defaults[o.key] or o.key == "address":
            continue
        value = values[o.key]
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
    # not --quiet: the job's log (`rayinfer logs`) has its phases and a progress line every
    # --progress-interval seconds (no terminal there, so no bar)
    return " ".join(shlex.quote(w) for w in words)


def _values(obj: object, prefix: str = "") -> dict[str, object]:
    """A config dataclass's fields by flag key (`options.conf_thres`); {} for None."""
    return {prefix + f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)} if obj is not None else {}


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
    """Ray's Jobs API at `dashboard`; a one-line SetupError when nothing (or no Ray) answers there."""
    from ray.job_submission import JobSubmissionClient

    from rayinfer.jobs.cluster import quiet_packaging
    from rayinfer.jobs.scheduler import first_line

    quiet_packaging()
    try:
        return JobSubmissionClient(dashboard, headers=auth_headers())
    except (ConnectionError, RuntimeError, ValueError) as exc:  # the SDK's errors: refused, not Ray, bad URL
        raise SetupError(f"cannot reach Ray Jobs at {dashboard}: {first_line(exc)}") from None


def _job(dashboard: str, job_id: str) -> tuple[Any, Any]:
    """The client and the job's info; a one-line SetupError for a job the cluster does not know."""
    from rayinfer.jobs.scheduler import first_line

    jobs_api = client(dashboard)
    try:
        return jobs_api, jobs_api.get_job_info(job_id)
    except RuntimeError as exc:  # the SDK raises RuntimeError("... does not exist") for a 404
        raise SetupError(f"no job {job_id} at {dashboard}: {first_line(exc)}") from None


def status(dashboard: str, job_id: str) -> str:
    """"raysubmit_X: RUNNING (rayinfer coco), started 08:30:24" for `rayinfer status`."""
    _, info = _job(dashboard, job_id)
    text = f"{job_id}: {info.status.value}"
    meta = info.metadata or {}
    if meta.get("tool") == "rayinfer":
        text += f" (rayinfer {meta.get('task', '')})".rstrip()
    if info.start_time:
        text += ", started " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.start_time / 1000))
    if info.end_time:
        text += ", ended " + time.strftime("%H:%M:%S", time.localtime(info.end_time / 1000))
    if info.driver_exit_code is not None:
        text += f", exit code {info.driver_exit_code}"
    return text


def logs(dashboard: str, job_id: str) -> str:
    """The job's logs so far."""
    jobs_api, _ = _job(dashboard, job_id)
    return jobs_api.get_job_logs(job_id)


def stop(dashboard: str, job_id: str, wait_s: float = 60.0) -> str:
    """Stop the job (Ray sends SIGTERM, then SIGKILL) and wait until it has ended; its final status."""
    jobs_api, info = _job(dashboard, job_id)
    if info.status.is_terminal():
        return info.status.value
    jobs_api.stop_job(job_id)
    deadline = time.monotonic() + wait_s
    while not (current := jobs_api.get_job_status(job_id)).is_terminal():
        if time.monotonic() > deadline:
            raise SetupError(f"job {job_id} did not stop within {wait_s:.0f} s; it is {current.value}")
        time.sleep(0.5)
    return current.value


def submit(cfg: JobConfig, dashboard: str) -> str:
    from rayinfer.jobs import cluster

    cfg = resolve_paths(cfg)
    jobs_api = client(dashboard)
    command = entrypoint(dataclasses.replace(cfg, address=None))
    job_id = jobs_api.submit_job(
        entrypoint=command,
        runtime_env=cluster.shipped_runtime_env(),
        metadata={"tool": "rayinfer", "task": cfg.task},
    )
    log.debug("submitted %s to %s: %s", job_id, dashboard, command)
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
    # The job's own error is in the logs just streamed; Ray's message repeats their tail
    # ("Job entrypoint command failed with exit code 2, last available logs: ...").
    message = (info.message or "").strip().splitlines()
    log.error("job %s %s%s", job_id, status.value, f" with exit code {code}" if code is not None else
              f": {message[0] if message else 'no message'}")
    return int(code) if code else 1


def submit_and_follow(cfg: JobConfig, dashboard: str, follow_logs: bool = True) -> int:
    job_id = submit(cfg, dashboard)
    where = f" --dashboard {dashboard}"
    sys.stdout.write(f"job {job_id} submitted to {dashboard}\n")
    if not follow_logs:
        sys.stdout.write(f"follow it: rayinfer logs {job_id} --follow{where}; "
                         f"stop it: rayinfer stop {job_id}{where}\n")
        return 0
    return follow(dashboard, job_id)

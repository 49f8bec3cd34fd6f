"""A real cluster: `ray start --head` on 127.0.0.1, the job submitted through Ray Jobs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

import rayinfer.actors
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.submit import client, follow, submit
from tests.conftest import need_shared

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(400)]

DASHBOARD = "http://127.0.0.1:8265"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    """A one-node Ray cluster started the way an operator would, torn down after."""
    if shutil.which("ray") is None:
        pytest.skip("the `ray` command is not on PATH")
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8265)) == 0:
            pytest.skip("port 8265 is taken: another Ray dashboard is running here")
    temp = tempfile.mkdtemp(prefix="rayinfer-head-", dir="/tmp")
    port = _free_port()
    cmd = ["ray", "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", "--dashboard-port=8265", "--num-cpus=2", f"--temp-dir={temp}",
           "--disable-usage-stats"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client(DASHBOARD).list_jobs()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield DASHBOARD, port
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_dashboard_listens_on_loopback_only(head):
    head, _ = head
    try:
        with urllib.request.urlopen(f"{head}/api/version", timeout=10) as r:
            assert r.status == 200
    except urllib.error.HTTPError as exc:  # Ray >= 2.59 local clusters require a token
        assert exc.code == 401
    addresses = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    for address in addresses - {"127.0.0.1"}:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, 8265)) != 0, f"dashboard reachable on {address}"


@pytest.mark.shared
def test_job_submitted_through_ray_jobs_reports_metrics(head, tmp_path):
    head, _ = head
    root = need_shared("data", "coco-val2017-mini")
    model = need_shared("models", "yolov8n_int8.onnx")
    out = tmp_path / "out"
    cfg = JobConfig(task="coco", data_root=str(root), model=str(model), output=str(out), limit=32)
    job_id = submit(cfg, head)
    assert follow(head, job_id, timeout_s=300) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 32 and 0.3 < metrics["AP"] <= 1.0
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["predictions"] == 32
    status = client(head).get_job_info(job_id)
    assert status.status == "SUCCEEDED" and status.metadata.get("tool") == "rayinfer"


def test_submitted_job_with_bad_setup_fails_with_its_message(head, tmp_path):
    head, _ = head
    cfg = JobConfig(task="coco", data_root=str(tmp_path / "nowhere"), model=str(tmp_path / "m.onnx"),
                    output=str(tmp_path / "out"))
    job_id = submit(cfg, head)
    assert follow(head, job_id, timeout_s=200) == 2
    logs = client(head).get_job_logs(job_id)
    assert "rayinfer: error: data root not found" in logs
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.shared
def test_run_with_address_joins_the_cluster(head, tmp_path):
    """`rayinfer run --address` from outside the cluster: the package travels with the job
    (py_modules) and the actors import that copy, not the one installed here."""
    _, port = head
    root = need_shared("data", "coco-val2017-mini")
    model = need_shared("models", "yolov8n_int8.onnx")
    out = tmp_path / "out"
    # this head was started with Ray's default token (~/.ray/auth_token); RAY_AUTH_MODE is
    # not set: `run --address` finds the token as `submit` does (issue 22 item 1)
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    cmd = [sys.executable, "-m", "rayinfer.jobs", "run", "coco", "--address", f"127.0.0.1:{port}", "--data-root", str(root),
           "--model", str(model), "--output", str(out), "--limit", "16", "--quiet", "--no-report"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["predictions"] == 16
    assert run["config"]["address"] == f"127.0.0.1:{port}"
    installed = os.path.dirname(rayinfer.actors.__file__)
    for actor in run["actors"]:
        assert actor["imported_from"] != installed and "runtime_resources" in actor["imported_from"], actor

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
from tests.support.s3server import free_port
from rayinfer.jobs.submit import client
from tests.conftest import need_shared

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(400), pytest.mark.usefixtures("no_embedded_ray")]

DASHBOARD = "http://127.0.0.1:8265"


@pytest.fixture(scope="module")
def head():
    """A one-node Ray cluster started the way an operator would, torn down after."""
    if shutil.which("ray") is None:
        pytest.skip("the `ray` command is not on PATH")
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8265)) == 0:
            pytest.skip("port 8265 is taken: another Ray dashboard is running here")
    temp = tempfile.mkdtemp(prefix="rayinfer-head-", dir="/tmp")
    port = free_port()
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


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # the token is found, as by `ray`
    return subprocess.run([sys.executable, "-m", "rayinfer.jobs", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_submitted_jobs_are_followed_and_stopped_by_id(head, tmp_path):
    """issue 22 item 10: `submit --no-wait` returns the id at once; `status`, `logs`, `stop` by id,
    through Ray's Jobs API with the cluster's token; Ray's packaging chatter stays out of the terminal."""
    import re

    dashboard, _ = head
    submitted = []
    for name in ("followed", "stopped"):  # both at once: the second is stopped while the first runs
        sent = _cli("submit", "coco", "--output", str(tmp_path / name), "--dashboard", dashboard, "--no-wait")
        assert sent.returncode == 0, sent.stderr
        submitted.append(re.fullmatch(r"job (raysubmit_\w+) submitted to .*", sent.stdout.splitlines()[0]).group(1))
        assert f"rayinfer logs {submitted[-1]} --follow" in sent.stdout
        assert not re.search(r"[Uu]ploading|[Pp]ackage", sent.stdout + sent.stderr), sent.stdout + sent.stderr
    job_id, other = submitted
    stopped = _cli("stop", other, "--dashboard", dashboard)
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"job {other}: STOPPED", stopped
    shown = _cli("status", other, "--dashboard", dashboard)
    assert shown.returncode == 0 and shown.stdout.startswith(f"{other}: STOPPED (rayinfer coco), started ")
    assert not (tmp_path / "stopped" / "metrics.json").exists()

    # the first followed to its end: its log is the run's, phases, progress lines and summary
    followed = _cli("logs", job_id, "--follow", "--dashboard", dashboard, timeout=300)
    assert followed.returncode == 0, followed.stderr
    for line in ("inference: 48 samples in 3 shards", "coco: 48/48 samples (100%)", "Per class",
                 f"Results saved to {tmp_path / 'followed'}"):
        assert line in followed.stdout, followed.stdout
    assert _cli("logs", job_id, "--dashboard", dashboard).stdout == followed.stdout
    metrics = json.loads((tmp_path / "followed/metrics.json").read_text())
    assert metrics["images"] == 48 and metrics["AP50"] >= 0.9, metrics
    assert json.loads((tmp_path / "followed/run.json").read_text())["counts"]["predictions"] == 48
    assert client(dashboard).get_job_info(job_id).metadata.get("tool") == "rayinfer"
    assert re.match(rf"{job_id}: SUCCEEDED \(rayinfer coco\), started .*, exit code 0$",
                    _cli("status", job_id, "--dashboard", dashboard).stdout.strip())

    # mistakes: one line, exit 2, within seconds
    for args in (("status", "raysubmit_nosuchjob", "--dashboard", dashboard),
                 ("submit", "coco", "--dashboard", f"http://127.0.0.1:{free_port()}", "--no-wait")):
        t = time.monotonic()
        wrong = _cli(*args)
        assert wrong.returncode == 2 and wrong.stderr.count("rayinfer: error: ") == 1, (args, wrong.stderr)
        last = wrong.stderr.strip().splitlines()[-1]
        assert last.startswith("rayinfer: error: ") and "Traceback" not in wrong.stderr, wrong.stderr
        assert time.monotonic() - t < 20


def test_a_submitted_job_with_bad_setup_fails_with_its_message_said_once(head, tmp_path):
    """issue 22 item 3: the job's error is in its streamed log; the follow-up line does not repeat it."""
    dashboard, _ = head
    proc = _cli("submit", "coco", "--data-root", str(tmp_path / "nowhere"), "--model", str(tmp_path / "m.onnx"),
                "--output", str(tmp_path / "out"), "--dashboard", dashboard, timeout=300)
    assert proc.returncode == 2
    both = proc.stdout + proc.stderr
    assert both.count("rayinfer: error: data root not found") == 1, both
    assert "exit code 2" in proc.stderr
    assert not os.path.exists(tmp_path / "out")

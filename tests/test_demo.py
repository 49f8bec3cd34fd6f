"""The README's first command: the built-in demo, from a folder with nothing in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rayinfer.jobs.demo import demo_models

pytestmark = pytest.mark.timeout(300)


def _run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "rayinfer.jobs", "run", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=280)


def _demo(task: str, tmp_path) -> dict:
    proc = _run(tmp_path, task, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cache/rayinfer/demo" / task / ".complete").exists()
    assert (tmp_path / "runs" / task / "report.html").exists()
    return json.loads((tmp_path / "runs" / task / "metrics.json").read_text())


def test_demo_models_are_small_and_committed():
    sizes = [p.stat().st_size for p in demo_models().values()]
    assert all(sizes) and sum(sizes) < 5 * 1024 * 1024


def test_coco_demo_reports_meaningful_accuracy(tmp_path):
    metrics = _demo("coco", tmp_path)
    assert metrics["images"] == 48
    assert metrics["AP50"] >= 0.5, metrics


def test_a_second_run_says_where_it_goes_and_the_summary_states_its_time(tmp_path):
    """issue 22 items 4 and 6: the default folder taken -> said at the start; the summary's
    wall time end to end, its parts (adding up to it) and both throughputs."""
    import re

    assert _run(tmp_path, "coco", "--quiet", "--no-report").returncode == 0
    proc = _run(tmp_path, "coco")
    assert proc.returncode == 0, proc.stderr
    assert "results go to runs/coco2 (runs/coco holds an earlier run" in proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if "end to end (" in ln)
    total = float(re.search(r"errors in ([\d.]+) s end to end", line).group(1))
    parts = {name.strip(): float(v) for name, v in re.findall(r"([A-Za-z ]+?) ([\d.]+) s(?=[,)])", line.split("(", 1)[1])}
    assert {"checks", "Ray start", "actor start", "inference", "Ray stop", "evaluation", "report"} == set(parts)
    assert re.search(r"[\d.]+ samples/s end to end, [\d.]+ in steady state", line)
    run = json.loads((tmp_path / "runs/coco2/run.json").read_text())
    t = run["timings"]
    assert t["total_s"] == pytest.approx(total, abs=0.06)
    for name, key in (("Ray start", "ray_start_s"), ("inference", "inference_s"), ("report", "report_s")):
        assert parts[name] == pytest.approx(t[key], abs=0.06)
    # the parts are where the time went (unrounded, from run.json; printed, each is rounded to 0.1 s)
    measured = sum(t[k] for k in ("checks_s", "ray_start_s", "setup_s", "inference_s", "ray_stop_s",
                                  "evaluation_s", "report_s"))
    assert 0.8 * t["total_s"] <= measured <= t["total_s"], t
    assert run["throughput"]["end_to_end_samples_per_s"] < run["throughput"]["samples_per_s"]
    # --resume / --overwrite without --output: which run? refused in one line
    bad = _run(tmp_path, "coco", "--resume")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "rayinfer: error: --resume needs --output: the folder of the run to continue")


def test_nyu_demo_reports_meaningful_accuracy(tmp_path):
    metrics = _demo("nyu", tmp_path)
    assert metrics["images"] == 8
    assert metrics["delta1"] >= 0.7 and metrics["abs_rel"] <= 0.2, metrics

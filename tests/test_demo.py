"""The README's first command: the built-in demo, from a folder with nothing in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rayinfer.jobs.demo import demo_models

pytestmark = pytest.mark.timeout(300)


def _demo(task: str, tmp_path) -> dict:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "rayinfer.jobs", "run", task, "--quiet"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=280)
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


def test_nyu_demo_reports_meaningful_accuracy(tmp_path):
    metrics = _demo("nyu", tmp_path)
    assert metrics["images"] == 8
    assert metrics["delta1"] >= 0.7 and metrics["abs_rel"] <= 0.2, metrics

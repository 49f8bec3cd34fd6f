"""The README's first command: the built-in demo, from a folder with nothing in it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from rayinfer.jobs.demo import demo_models

pytestmark = pytest.mark.timeout(300)


def _run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "rayinfer.jobs", "run", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=280)


def _demo(task: str, tmp_path) -> tuple[dict, str]:
    proc = _run(tmp_path, task, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cache/rayinfer/demo" / task / ".complete").exists()
    assert (tmp_path / "runs" / task / "report.html").exists()
    return json.loads((tmp_path / "runs" / task / "metrics.json").read_text()), proc.stdout


def test_demo_models_are_small_and_committed():
    sizes = [p.stat().st_size for p in demo_models().values()]
    assert all(sizes) and sum(sizes) < 5 * 1024 * 1024


def test_coco_demo_then_a_second_run_says_where_it_goes_and_the_summary_states_its_time(tmp_path):
    """The coco demo's accuracy; then issue 22 items 4 and 6: the default folder taken -> said at
    the start; the summary's wall time end to end, its parts (adding up to it) and both throughputs."""
    # the first run, under a terminal of width 0 (as `script -q -c` gives; tqdm would draw nothing
    # there): progress as log lines (issue 22 item 5)
    main, child = _terminal(0)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    first = subprocess.Popen([sys.executable, "-m", "rayinfer.jobs", "run", "coco", "--no-report",
                              "--progress-interval", "0.01", "--shard-size", "4"],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=child)
    os.close(child)
    narrow = _read_all(main)
    assert first.wait(timeout=280) == 0, narrow
    lines = re.findall(r"coco: (\d+)/48 samples \(\d+%\)", narrow)
    assert len(lines) >= 3 and lines[-1] == "48" and lines == sorted(lines, key=int), narrow
    # the README's first command: the demo set is generated once, the demo model is accurate on it
    assert (tmp_path / "cache/rayinfer/demo/coco/.complete").exists()
    metrics = json.loads((tmp_path / "runs/coco/metrics.json").read_text())
    assert metrics["images"] == 48 and metrics["AP50"] >= 0.5, metrics
    proc = _run(tmp_path, "coco")
    assert proc.returncode == 0, proc.stderr
    assert "results go to runs/coco2 (runs/coco holds an earlier run" in proc.stderr
    # issue 22 item 5: a status line for each phase, in order; no terminal here: progress as log lines
    phases = ["results go to", "starting Ray here (embedded)", "starting 1 inference actor", "1 actor ready",
              "inference: 48 samples in 3 shards", "coco: 48/48 samples (100%)", "evaluation: coco",
              "writing the report", "report: "]
    at = [proc.stderr.find(p) for p in phases]
    assert -1 not in at and at == sorted(at), dict(zip(phases, at))
    line = next(ln for ln in proc.stdout.splitlines() if "end to end (" in ln)
    total = float(re.search(r"errors in ([\d.]+) s end to end", line).group(1))
    parts = {name.strip(): float(v) for name, v in re.findall(r"([A-Za-z ]+?) ([\d.]+) s(?=[,)])", line.split("(", 1)[1].split(")")[0] + ")")}
    assert {"checks", "Ray start", "actor start", "inference", "Ray stop", "evaluation", "report"} == set(parts)
    assert re.search(r"[\d.]+ samples/s end to end, [\d.]+ in steady state", line)
    # issue 22 item 9, the order `yolo val` prints: the per-class table, speed, ..., where results went
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"Per class \(P, R at IoU 0\.5, confidence 0\.\d+: the best mean F1\)", lines[0])
    assert lines[1].split() == ["class", "images", "instances", "P", "R", "AP50", "AP50-95"]
    assert lines[3].split()[:3] == ["all", "48", str(sum(int(ln.split()[2]) for ln in lines[4:7]))]
    assert {ln.split()[0] for ln in lines[4:7]} == {"square", "disc", "triangle"}
    speed = next(i for i, ln in enumerate(lines) if ln.startswith("Speed: "))
    assert re.fullmatch(r"Speed: load [\d.]+/[\d.]+, preprocess [\d.]+/[\d.]+, queue [\d.]+/[\d.]+, "
                        r"infer [\d.]+/[\d.]+, postprocess [\d.]+/[\d.]+ ms per image \(p50/p90\)", lines[speed])
    assert lines[speed + 1] == line and lines[-1] == f"Results saved to {tmp_path / 'runs/coco2'}"
    assert (tmp_path / "runs/coco2/report.html").exists()
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
    # the tail: from the last shard's commit to metrics.json, which holds the evaluation; and
    # the evaluation done while the actors ran (each shard as it committed)
    tail = re.search(r"; evaluation ([\d.]+) s after the last shard \(overlapped ([\d.]+) s\)$", line)
    after, overlapped = float(tail.group(1)), float(tail.group(2))
    assert after == pytest.approx(t["after_last_shard_s"], abs=0.06) and t["after_last_shard_s"] >= t["evaluation_s"]
    assert overlapped == pytest.approx(t["evaluation_overlapped_s"], abs=0.06) and t["evaluation_overlapped_s"] > 0
    # --resume / --overwrite without --output: which run? refused in one line
    bad = _run(tmp_path, "coco", "--resume")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "rayinfer: error: --resume needs --output: the folder of the run to continue")


@pytest.mark.slow  # the README's `rayinfer run nyu`; the coco demo test runs the same path in the quick tier
def test_nyu_demo_reports_meaningful_accuracy(tmp_path):
    metrics, printed = _demo("nyu", tmp_path)
    assert metrics["images"] == 8
    assert metrics["delta1"] >= 0.7 and metrics["abs_rel"] <= 0.2, metrics
    # issue 22 item 9: for depth, a table by depth range (ranges with ground truth only) comes first
    lines = printed.splitlines()
    assert lines[0] == "By depth range"
    assert lines[1].split() == ["range", "(m)", "images", "pixels", "abs_rel", "rmse", "delta1"]
    rows = lines[3:lines.index("")]
    assert rows and all(int(r.split()[2]) > 0 and re.match(r"\d+-\d+$", r.split()[0]) for r in rows)


def _terminal(columns: int) -> tuple[int, int]:
    """A pseudo-terminal `columns` wide (0: what `script -q -c` gives): (its reading end, its terminal)."""
    import fcntl
    import pty
    import struct
    import termios

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    return main, child


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def test_on_a_terminal_progress_is_a_bar_and_elsewhere_lines(caplog):
    from rayinfer.jobs.progress import Progress

    for columns, bar in ((100, True), (0, False)):
        main, child = _terminal(columns)
        with os.fdopen(child, "w") as stream, caplog.at_level("INFO", logger="rayinfer.progress"):
            caplog.clear()
            with Progress("coco", total=48, initial=8, interval_s=0.0, stream=stream) as progress:
                for _ in range(4):
                    progress.update(10, "AP50 0.500")
        drawn = _read_all(main)
        lines = [r.getMessage() for r in caplog.records]
        if bar:
            assert re.search(r"coco: 100%\|.*\| 48/48 ", drawn) and "AP50 0.500" in drawn and not lines, drawn
        else:
            assert drawn == "" and len(lines) == 4, lines
            assert re.fullmatch(r"coco: 48/48 samples \(100%\), [\d.]+ samples/s; AP50 0\.500", lines[-1])
            assert re.fullmatch(r"coco: 18/48 samples \(38%\), [\d.]+ samples/s, about \d+ s left; AP50 0\.500",
                                lines[0])

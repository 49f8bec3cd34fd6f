"""`report`: the report's cost: writing it (`rayinfer eval --report`, in a fresh process:
wall time and peak RSS) at two dataset sizes, its size, and its render time in headless
Chromium (the page's load event, from navigation start)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import repeat_coco
from benchmarks.memory import _MEASURED_RUN, _size_name
from rayinfer.jobs.format import format_table


def chromium() -> str | None:
    """Debian's `chromium` (or another Chromium-family browser) on PATH."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def headless(browser: str, page: Path, profile: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Open `page` in headless Chromium (no network, a fresh profile) with `extra` flags."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", *extra, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def render_ms(browser: str, page: Path, profile: Path) -> float | None:
    """Milliseconds from navigation start to the page's load event (every figure decoded)."""
    dom = headless(browser, page, profile, "--dump-dom").stdout
    found = re.search(r'data-load-ms="([0-9.]+)"', dom)
    return float(found.group(1)) if found else None


def run_report_bench(data_root: Path, model: Path, sizes: Sequence[int]) -> dict[str, float | None]:
    work = Path(tempfile.mkdtemp(prefix="rayinfer-report-"))
    browser = chromium()
    rows, results = [], {}
    try:
        for n in sizes:
            root = repeat_coco(data_root, n, work / f"coco{n}")
            out = work / f"out{n}"
            job = [sys.executable, "-m", "rayinfer.jobs", "run", "coco", "--data-root", str(root), "--model", str(model),
                   "--output", str(out), "--quiet", "--no-progress", "--no-report"]
            proc = subprocess.run(job, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"the {n}-image job failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
            cmd = [sys.executable, "-c", _MEASURED_RUN, "eval", "coco", "--predictions", str(out), "--data-root",
                   str(root), "--report"]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                raise RuntimeError(f"the {n}-image report failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
            rss = round(json.loads(proc.stdout.strip().splitlines()[-1])["maxrss_kb"] / 1024, 1)
            page = out / "report.html"
            size = round(page.stat().st_size / 1e6, 2)
            ms = [render_ms(browser, page, work / "profile") for _ in range(3)] if browser else [None]
            best = min((m for m in ms if m is not None), default=None)
            name = _size_name(n)
            results.update({f"report_s_{name}": round(wall, 2), f"report_rss_mb_{name}": rss,
                            f"report_mb_{name}": size, f"render_ms_{name}": best})
            rows.append([n, f"{wall:.1f}", rss, size, "-" if best is None else f"{best:.0f}"])
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"report: {model.name}, {data_root.name} repeated; `rayinfer eval --report` in a fresh process")
    print(format_table(["images", "eval + report s", "peak RSS MB", "report.html MB", "render ms (best of 3)"], rows))
    return results

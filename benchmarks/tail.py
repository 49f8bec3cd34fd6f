"""`tail`: what comes after the last image is inferred, on a COCO job of val2017's size.

The set is the COCO folder repeated to N images; two simulated fast devices return one
real YOLOv8n output (its detections decoded and NMSed for every image, as for a real
model), so the job makes val2017's volume of detections in seconds. The job runs as a user
runs it (`rayinfer run`, a fresh process), then `rayinfer eval` on its folder with each
COCO engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.accel import real_output
from benchmarks.common import repeat_coco
from rayinfer.jobs.format import format_table

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _rayinfer(*args: str) -> tuple[float, str]:
    """Run `rayinfer ARGS` in a fresh process: (wall seconds, stdout)."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rayinfer.jobs", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"rayinfer {' '.join(args[:2])} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return wall, proc.stdout


def run_tail_bench(data_root: Path, images: int, output_model: Path, devices: int = 2, latency_ms: float = 2.0,
                   capacity: int = 8) -> dict[str, Any]:
    from rayinfer.datasets.coco import CocoDataset

    work = Path(tempfile.mkdtemp(prefix="rayinfer-tail-"))
    try:
        root = repeat_coco(data_root, images, work / "coco")
        ds = CocoDataset(root)
        output = real_output(ds, ds.samples()[0], output_model, work / "output.npy")
        model = (f"sim://?latency_ms={latency_ms:g}&capacity={capacity}&input=1x3x640x640&output=1x84x8400"
                 f"&output_file={output}")
        out = work / "run"
        wall, _ = _rayinfer("run", "coco", "--data-root", str(root), "--model", model, "--actors", str(devices),
                            "--output", str(out), "--quiet", "--no-progress")
        run = json.loads((out / "run.json").read_text())
        job = json.loads((out / "metrics.json").read_text())
        t, rate = run["timings"], run["throughput"]
        report_after = (out / "report.html").stat().st_mtime - (out / "metrics.json").stat().st_mtime
        evals = {}
        for engine in ("numpy", "pycocotools"):
            seconds, printed = _rayinfer("eval", "coco", "--predictions", str(out), "--data-root", str(root), "--json",
                                         "--coco-engine", engine)
            evals[engine] = (seconds, json.loads(printed))
        fast, reference = evals["numpy"][1], evals["pycocotools"][1]
        equal = all(abs(m[k] - reference[k]) <= 1e-6 for m in (fast, job) for k in STATS)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    steady, end_to_end = rate["samples_per_s"], rate["end_to_end_samples_per_s"]
    rows = [["inference (steady state)", t["inference_s"], steady],
            ["evaluation overlapped with inference (thread CPU)", t.get("evaluation_overlapped_s"), None],
            ["last shard -> metrics.json", t["after_last_shard_s"], None],
            ["metrics.json -> report.html", round(report_after, 3), None],
            ["report", t.get("report_s"), None],
            ["whole job (run.json total_s)", t["total_s"], end_to_end],
            ["whole command (wall)", round(wall, 3), None],
            ["rayinfer eval (numpy engine)", round(evals["numpy"][0], 3), None],
            ["rayinfer eval --coco-engine pycocotools", round(evals["pycocotools"][0], 3), None]]
    print(f"tail: {images} images ({data_root.name} repeated), {devices} simulated devices ({capacity} streams, "
          f"{latency_ms:g} ms), {job['detections']:,} detections; {os.cpu_count()} logical CPUs")
    print(format_table(["phase", "s", "img/s"], [[name, s, "" if rate is None else rate] for name, s, rate in rows]))
    print(f"end to end / steady = {end_to_end / steady:.2f}; offline eval numpy / pycocotools = "
          f"{evals['numpy'][0] / evals['pycocotools'][0]:.3f}; the 12 stats of the job, numpy and pycocotools equal "
          f"to 1e-6: {equal}")
    return {"images": images, "detections": job["detections"], "inference_s": t["inference_s"],
            "after_last_shard_s": t["after_last_shard_s"], "evaluation_overlapped_s": t.get("evaluation_overlapped_s"),
            "report_s": t.get("report_s"), "report_after_metrics_s": round(report_after, 3), "total_s": t["total_s"],
            "steady": steady, "end_to_end": end_to_end, "end_to_end_ratio": round(end_to_end / steady, 3),
            "offline_eval_s": round(evals["numpy"][0], 3),
            "offline_eval_pycocotools_s": round(evals["pycocotools"][0], 3),
            "offline_ratio": round(evals["numpy"][0] / evals["pycocotools"][0], 3), "stats_equal": equal,
            "AP": job["AP"]}

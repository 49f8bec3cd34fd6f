"""`memory`: peak RSS of the whole COCO job at two dataset sizes, each in a fresh process."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import repeat_coco
from rayinfer.jobs.format import format_table


#: Runs the CLI, then prints its own peak RSS: the driver's peak, evaluation and report included.
_MEASURED_RUN = (
    "import json, resource, sys\n"
    "from rayinfer.jobs.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print(json.dumps({'exit': code, 'maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n"
)


def _size_name(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def run_memory_bench(data_root: Path, model: Path, sizes: Sequence[int]) -> dict[str, float]:
    import shutil
    import subprocess
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="rayinfer-memory-"))
    rows, results = [], {}
    try:
        for n in sizes:
            root = repeat_coco(data_root, n, work / f"coco{n}")
            out = work / f"out{n}"
            cmd = [sys.executable, "-c", _MEASURED_RUN, "run", "coco", "--data-root", str(root), "--model", str(model),
                   "--output", str(out), "--quiet", "--no-progress"]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                raise RuntimeError(f"the {n}-image job failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
            measured = json.loads(proc.stdout.strip().splitlines()[-1])
            run = json.loads((out / "run.json").read_text())
            driver = round(measured["maxrss_kb"] / 1024, 1)
            actor = run["memory"]["actor_peak_rss_mb"]
            detections = json.loads((out / "metrics.json").read_text())["detections"]
            rows.append([n, run["counts"]["predictions"], detections, driver, actor, f"{wall:.0f}"])
            results[f"driver_mb_{_size_name(n)}"] = driver
            results[f"actor_mb_{_size_name(n)}"] = actor
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = _size_name(sizes[0]), _size_name(sizes[-1])
    results["driver_growth"] = round(results[f"driver_mb_{large}"] / results[f"driver_mb_{small}"] - 1, 4)
    results["actor_growth"] = round(results[f"actor_mb_{large}"] / results[f"actor_mb_{small}"] - 1, 4)
    print(f"memory: {model.name}, {data_root.name} repeated, whole job (evaluation, exports, report)")
    print(format_table(["images", "prediction rows", "detections", "driver peak RSS MB", "actor peak RSS MB", "wall s"],
                       rows))
    return results

"""`elastic`: a job on clusters that change under it (simulated devices, the `null` task).

- from zero: Ray's fake autoscaler with no worker node; the time from `rayinfer run` to its
  first result, and Ray's own time to bring up one node when asked (the floor).
- growth: 2 devices, 4 more join mid-job; the rate in the 3 s ending 10 s after they joined,
  against a fixed 6-device run's rate.
- straggler: 4 devices, one 3x slower; job time against the ideal for that capacity, with
  speculative copies and without.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import sim_uri
from tests.support.fakecluster import FakeAutoscaler
from rayinfer.jobs.format import format_table

WORKER = {"CPU": 1, "sim_device": 1}
DEVICE = {"num_cpus": 1, "resources": {"sim_device": 1}}


def _node_start_s(address: str) -> float:
    """Seconds from asking Ray's autoscaler for one worker's resources to that node alive."""
    import ray
    from ray.autoscaler.sdk import request_resources

    from rayinfer.jobs.cluster import _token_auth_if_token_found

    _token_auth_if_token_found()
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        t0 = time.monotonic()
        request_resources(bundles=[WORKER])
        while not any(n["Alive"] and n["Resources"].get("sim_device") for n in ray.nodes()):
            time.sleep(0.1)
        return time.monotonic() - t0
    finally:
        request_resources(bundles=[])
        ray.shutdown()


def _from_zero(work: Path, samples: int, model: str) -> dict[str, float]:
    with FakeAutoscaler(worker=WORKER, max_workers=2) as head:
        node_start = _node_start_s(head.address)
    out = work / "from-zero"
    with FakeAutoscaler(worker=WORKER, max_workers=2) as head:
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "rayinfer.jobs", "run", "null", "--data-root", ".", "--limit",
                        str(samples), "--model", model, "--address", head.address,
                        "--resource", "sim_device", "--output", str(out), "--quiet", "--no-report"],
                       check=True, capture_output=True)
    timeline = json.loads((out / "run.json").read_text())["timeline"]
    first = min(r["end_s"] for r in timeline["runs"] if r["outcome"] == "ok")
    return {"node_start_s": node_start, "first_result_s": timeline["started"] + first - t0}


def _job(**kw: Any) -> dict[str, Any]:
    from rayinfer.jobs.config import JobConfig
    from rayinfer.jobs.driver import run_job

    return run_job(JobConfig(task="null", data_root=".", progress=False, report=False, overwrite=True,
                             resource="sim_device", **kw)).run


def _rate(run: dict[str, Any], start: float, end: float) -> float:
    """Samples per second of the shards finished between `start` and `end` (epoch seconds)."""
    t0 = run["timeline"]["started"]
    done = [r for r in run["timeline"]["runs"] if r["outcome"] == "ok" and start <= t0 + r["end_s"] < end]
    per_shard = run["counts"]["processed_this_run"] / max(1, run["counts"]["shards"])
    return len(done) * per_shard / (end - start)


def _growth(work: Path, samples: int, model: str, shard_size: int) -> dict[str, float]:
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            c.add_node(**DEVICE)
        c.wait_for_nodes()
        ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
        result: dict[str, Any] = {}
        job = threading.Thread(target=lambda: result.setdefault("run", _job(
            limit=samples, model=model, shard_size=shard_size, address=c.address,
            output=str(work / "growth"))))
        job.start()
        time.sleep(8.0)  # two devices at work
        for _ in range(4):
            c.add_node(**DEVICE)
        joined = time.time()
        job.join()
        grown = result["run"]
        six = _job(limit=samples // 2, model=model, shard_size=shard_size, actors=6,
                   output=str(work / "six"))
    finally:
        ray.shutdown()
        c.shutdown()
    six_rate = six["throughput"]["samples_per_s"]
    after = _rate(grown, joined + 7.0, joined + 10.0)
    return {"growth_ratio": after / six_rate, "rate_before": _rate(grown, joined - 4.0, joined),
            "rate_10s_after": after, "six_device_rate": six_rate}


def _straggler(work: Path, samples: int, model: str, shard_size: int) -> dict[str, float]:
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for slowdown in ("1", "1", "1", "3"):
            c.add_node(**DEVICE, env_vars={"RAYINFER_SIM_SLOWDOWN": slowdown})
        c.wait_for_nodes()
        ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
        runs = {on: _job(limit=samples, model=model, shard_size=shard_size, actors=4,
                         speculation=on, output=str(work / f"straggler-{on}")) for on in (False, True)}
    finally:
        ray.shutdown()
        c.shutdown()
    rate = max(a["device_rate"] for a in runs[True]["actors"])  # one fast device, samples/s
    ideal = samples / (3 * rate + rate / 3)
    return {"straggler_ratio": runs[True]["timings"]["inference_s"] / ideal,
            "straggler_ratio_no_speculation": runs[False]["timings"]["inference_s"] / ideal,
            "straggler_ideal_s": ideal, "shards_speculated": runs[True]["counts"]["shards_speculated"],
            "speculative_wins": runs[True]["counts"]["speculative_wins"]}


def run_elastic_bench(latency_ms: float = 200.0, capacity: int = 4, shard_size: int = 16,
                      growth_samples: int = 2400, straggler_samples: int = 1200, device: str = "streams",
                      per_item_ms: float = 0.25) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="rayinfer-elastic-"))
    model = sim_uri(device, latency_ms, capacity, per_item_ms)
    results: dict[str, float] = {}
    results.update(_from_zero(work, 200, model))
    results.update(_growth(work, growth_samples, model, shard_size))
    results.update(_straggler(work, straggler_samples, model, shard_size))
    print(f"elastic: simulated devices ({model}), shards of {shard_size}")
    print(format_table(["figure", "value"], [
        ["first result from zero workers (s)", f"{results['first_result_s']:.1f}"],
        ["Ray's node start (s)", f"{results['node_start_s']:.1f}"],
        ["2 -> 6 devices: rate 10 s after joining / 6-device rate", f"{results['growth_ratio']:.2f}"],
        ["straggler: job time / ideal, speculation", f"{results['straggler_ratio']:.2f}"],
        ["straggler: job time / ideal, no speculation", f"{results['straggler_ratio_no_speculation']:.2f}"],
    ]))
    return {k: round(v, 4) for k, v in results.items()}

"""Elastic clusters, whole jobs (issue 20; slow tier): nodes joining and leaving during one
job (ray.cluster_utils.Cluster), a straggling node outrun by speculative copies, and a job
that starts on Ray's fake autoscaler with zero workers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest

from rayinfer.datasets.synthetic import write_coco
from tests.support.fakecluster import FakeAutoscaler
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.driver import EXIT_OK, run_job

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(600),
              pytest.mark.usefixtures("no_embedded_ray")]

SIM = "sim://?latency_ms={ms}&capacity=2&input=1x3x64x64&output=1x7x8"
DEVICE = {"num_cpus": 1, "resources": {"sim_device": 1}}


@pytest.fixture()
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    yield c
    ray.shutdown()
    c.shutdown()


def committed(out) -> int:
    return len(list((out / "predictions").glob("shard-*.parquet")))


def wait_until(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def exactly_once(out, n: int) -> None:
    ids = pq.read_table(out / "predictions").column("sample_id").to_pylist()
    assert len(ids) == n and len(set(ids)) == n


def in_thread(cfg: JobConfig) -> tuple[threading.Thread, dict]:
    result: dict = {}
    job = threading.Thread(target=lambda: result.setdefault("outcome", run_job(cfg)))
    job.start()
    return job, result


def actors_on(ray) -> dict[str, str]:
    """{actor name: node id} of the job's live inference actors."""
    out = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        if "-actor-" in a["name"]:
            try:
                info = ray.get(ray.get_actor(a["name"], namespace=a["namespace"]).info.remote(), timeout=5)
                out[a["name"]] = info["node_id"]
            except Exception:  # noqa: BLE001 - on a node that is going
                pass
    return out


def test_nodes_joining_and_leaving_during_one_job_lose_and_duplicate_nothing(cluster, tmp_path):
    import ray

    c = cluster
    first = [c.add_node(**DEVICE) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    # 2 devices alone would take 72 s: time for nodes to join and leave three times even where a
    # node takes tens of seconds to start (a CI run at 300 ms had its queue empty before the last join)
    root = write_coco(tmp_path / "coco", n_images=480, seed=7)
    out = tmp_path / "stormy"
    job, result = in_thread(JobConfig(task="coco", data_root=str(root), model=SIM.format(ms=600), shard_size=3,
                                      resource="sim_device", progress=False, report=False, output=str(out),
                                      address=c.address, max_actor_restarts=0))
    wait_until(lambda: committed(out) >= 4)
    joined = [c.add_node(**DEVICE) for _ in range(2)]  # two nodes join: they get actors and shards
    wait_until(lambda: len(set(actors_on(ray).values()) & {n.node_id for n in joined}) == 2)
    at_join = committed(out)
    for node in first:  # both original nodes leave
        c.remove_node(node)
    wait_until(lambda: committed(out) >= at_join + 6)
    late = c.add_node(**DEVICE)  # one more joins, one of the joiners leaves
    wait_until(lambda: late.node_id in actors_on(ray).values())
    c.remove_node(joined[0])
    job.join(400)
    stormy = result["outcome"]
    assert stormy.exit_code == EXIT_OK
    exactly_once(out, 480)
    run = stormy.run
    counts = run["counts"]
    assert counts["shards_requeued"] + counts["speculative_wins"] >= 1, counts
    ran = {a["name"] for a in run["actors"] if a["shards"]}
    assert len(ran) >= 4 and run["pool"]["ready"] >= 4, (ran, run["pool"])


def test_a_straggling_node_is_outrun_by_copies(cluster, tmp_path):
    import ray

    c = cluster
    for slowdown in ("1", "1", "1", "3"):  # four devices, one 3x slower
        c.add_node(**DEVICE, env_vars={"RAYINFER_SIM_SLOWDOWN": slowdown})
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    root = write_coco(tmp_path / "coco", n_images=96, seed=3)
    base = dict(task="coco", data_root=str(root), model=SIM.format(ms=150), shard_size=4, resource="sim_device",
                actors=4, shards_in_flight=1, progress=False, report=False)
    runs = {}
    for speculation in (False, True):
        out = tmp_path / f"speculation-{speculation}"
        runs[speculation] = run_job(JobConfig(**base, output=str(out), speculation=speculation))
        assert runs[speculation].exit_code == EXIT_OK
        exactly_once(out, 96)
    off, on = runs[False].run["counts"], runs[True].run["counts"]
    assert off["shards_speculated"] == 0 and on["shards_speculated"] >= 1 and on["speculative_wins"] >= 1, on
    assert runs[True].metrics == runs[False].metrics
    slow = [a for a in runs[False].run["actors"] if a["shards"] and a["shards"] <= 3]
    assert slow, runs[False].run["actors"]  # the 3x device took the fewest shards


def test_a_job_starts_from_zero_workers_on_the_fake_autoscaler(tmp_path):
    root = write_coco(tmp_path / "coco", n_images=150, seed=5)
    common = ["coco", "--data-root", str(root), "--model", SIM.format(ms=200), "--shard-size", "3", "--no-report",
              "--progress-interval", "2"]

    def rayinfer(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rayinfer.jobs", "run", *common, *args], capture_output=True,
                              text=True, timeout=400)

    # one device alone takes 15 s: time for the autoscaler to add a second
    fixed = rayinfer("--output", str(tmp_path / "fixed"))  # Ray embedded here, before the cluster starts
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    with FakeAutoscaler(worker={"CPU": 1, "sim_device": 1}, max_workers=3) as head:
        elastic = rayinfer("--output", str(tmp_path / "elastic"), "--address", head.address,
                           "--resource", "sim_device", "--actor-wait", "180")
    assert elastic.returncode == 0, elastic.stderr[-3000:]
    assert "no alive node with CPUs now; asking the cluster for actors of {CPU: 1, sim_device: 1}" in elastic.stderr
    assert "1 actor ready" in elastic.stderr
    exactly_once(tmp_path / "elastic", 150)
    run = json.loads((tmp_path / "elastic/run.json").read_text())
    nodes = {a["node_id"] for a in run["actors"]}
    assert len(nodes) >= 2, run["actors"]  # the autoscaler launched more than the first worker
    assert run["pool"]["growable"] and run["pool"]["asked"] >= 2
    fixed_metrics = json.loads((tmp_path / "fixed/metrics.json").read_text())
    assert json.loads((tmp_path / "elastic/metrics.json").read_text()) == fixed_metrics

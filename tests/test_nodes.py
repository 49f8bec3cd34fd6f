"""Several Ray nodes on this machine (ray.cluster_utils.Cluster): a worker node removed mid-job."""

from __future__ import annotations

import threading
import time

import pyarrow.parquet as pq
import pytest

from rayinfer.datasets.synthetic import write_coco
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.driver import EXIT_OK, run_job

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(400), pytest.mark.usefixtures("no_embedded_ray")]

SIM = "sim://?latency_ms=80&capacity=2&input=1x3x64x64&output=1x7x8"


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1) for _ in range(3)]
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    yield c, workers
    ray.shutdown()
    c.shutdown()


def test_removing_a_worker_node_mid_job_keeps_outputs_exactly_once(cluster, tmp_path):
    import ray

    c, workers = cluster
    root = write_coco(tmp_path / "coco", n_images=36, seed=11)
    base = JobConfig(task="coco", data_root=str(root), model=SIM, output=str(tmp_path / "calm"), actors=2,
                     shard_size=3, progress=False, report=False)
    calm = run_job(base)
    assert calm.exit_code == EXIT_OK

    out = tmp_path / "stormy"
    result: dict = {}
    job = threading.Thread(target=lambda: result.setdefault("outcome", run_job(
        JobConfig(**{**base.to_dict(), "output": str(out)}))))
    job.start()
    deadline = time.monotonic() + 120
    while len(list((out / "predictions").glob("shard-*.parquet"))) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    named = [a for a in ray.util.list_named_actors(all_namespaces=True) if "-actor-" in a["name"]]
    busy = {ray.get(ray.get_actor(a["name"], namespace=a["namespace"]).info.remote())["node_id"] for a in named}
    # the node this process is attached to cannot be removed without ending the test itself
    attached = ray._private.worker.global_worker.node._raylet_socket_name
    victim = next(w for w in workers if w.node_id in busy and w._raylet_socket_name != attached)
    c.remove_node(victim)
    job.join(300)
    stormy = result["outcome"]
    assert stormy.exit_code == EXIT_OK
    ids = pq.read_table(out / "predictions").column("sample_id").to_pylist()
    assert len(ids) == 36 and len(set(ids)) == 36
    assert stormy.metrics == calm.metrics
    # the lost node's shards were re-queued, or (the queue already empty) copies outran them
    counts = stormy.run["counts"]
    assert counts["shards_requeued"] + counts["speculative_wins"] >= 1, counts

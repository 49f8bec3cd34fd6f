"""How many actors, with what resources, on a given cluster (ray.nodes() faked)."""

from __future__ import annotations

import pytest

from rayinfer.datasets.base import SetupError
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.placement import plan_actors


def node(cpu: float, gpu: float = 0, **extra: float) -> dict:
    resources = {"CPU": cpu, **({"GPU": gpu} if gpu else {}), **extra}
    return {"Alive": True, "Resources": resources}


@pytest.fixture()
def cluster(monkeypatch):
    import ray

    def use(*nodes: dict) -> None:
        monkeypatch.setattr(ray, "nodes", lambda: list(nodes))

    return use


def cfg(**kw) -> JobConfig:
    return JobConfig.from_dict({"task": "coco", "data_root": "d", "model": "m.onnx", "output": "o", **kw})


def test_one_actor_per_gpu_with_the_node_cpus_per_gpu(cluster):
    cluster(node(16, 2), node(8, 1), node(4))  # the CPU-only node hosts no GPU actor
    assert plan_actors(cfg(providers=("cuda", "cpu"))) == (3, 8.0, 1.0)
    assert plan_actors(cfg(providers=("tensorrt",), cpus_per_actor=2)) == (3, 2.0, 1.0)
    assert plan_actors(cfg(providers=("cuda",), actors=1)) == (1, 8.0, 1.0)


def test_gpu_providers_on_a_cluster_without_gpus_stop_at_setup(cluster):
    cluster(node(8))
    with pytest.raises(SetupError, match="need a GPU, but the Ray cluster has 0 GPUs"):
        plan_actors(cfg(providers=("cuda",)))


def test_cpu_nodes_get_one_actor_each_or_the_asked_number(cluster):
    cluster(node(2))
    assert plan_actors(cfg()) == (1, 2, 0.0)
    assert plan_actors(cfg(actors=4)) == (4, 0.5, 0.0)
    cluster(node(2), node(2))
    assert plan_actors(cfg()) == (2, 2, 0.0)
    assert plan_actors(cfg(actors=3)) == (3, 1.0, 0.0)  # two per node at most, so all three fit


def test_custom_resource_units_become_actors(cluster):
    cluster(node(2, sim_device=2))
    assert plan_actors(cfg(resource="sim_device")) == (2, 1.0, 0.0)
    with pytest.raises(SetupError, match="no 'npu' resource"):
        plan_actors(cfg(resource="npu"))

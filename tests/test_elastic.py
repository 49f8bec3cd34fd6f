"""Elastic clusters (issue 20): actors that join mid-run, idle ones released, speculative
copies of straggling shards, and the wait for a first actor that never comes.

The quick tests drive the scheduler with small toy actors on the embedded Ray; the slow
ones (tests/test_elastic_cluster.py) run whole jobs on clusters whose nodes come and go.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from rayinfer.actors.actor import ShardResult
from rayinfer.datasets.base import ERROR_SCHEMA, Sample, SetupError
from rayinfer.jobs.config import ConfigError, JobConfig
from rayinfer.jobs.scheduler import ShardScheduler, Shard
from rayinfer.jobs.placement import ActorFleet, ActorShape, Placement

pytestmark = pytest.mark.timeout(120)


class Toy:
    """An actor that takes `delay_s` per shard; shard `slow_shard` takes `slow_s` the first
    time any actor runs it (the flag file marks the first run) and `always_slow` shards
    take `slower_s` every time."""

    def __init__(self, name: str, delay_s: float = 0.05, slow_s: float = 0.0, flag: str | None = None,
                 slow_shard: int = -1, always_slow: tuple[int, ...] = (), slower_s: float = 0.0) -> None:
        self.name, self.delay_s, self.slow_s, self.slower_s = name, delay_s, slow_s, slower_s
        self.flag, self.slow_shard, self.always_slow = flag, slow_shard, always_slow

    def info(self) -> dict:
        return {"name": self.name, "node_id": None}

    def stats(self) -> dict:
        return {"name": self.name, "pid": os.getpid()}

    def process(self, index: int, samples, final_attempt: bool = False) -> ShardResult:
        if index in self.always_slow:
            time.sleep(self.slower_s)
        elif index == self.slow_shard and self.flag and os.path.exists(self.flag):
            os.remove(self.flag)
            time.sleep(self.slow_s)
        else:
            time.sleep(self.delay_s)
        # a whole result: one row per sample, as the scheduler checks
        rows = pa.table({"sample_id": [s.sample_id for s in samples]})
        return ShardResult(index, rows, ERROR_SCHEMA.empty_table(), self.name, 0.0)


def shards(n: int) -> list[Shard]:
    return [Shard(i, (Sample(str(i), f"{i}.jpg"),)) for i in range(n)]


def toys(ray, n: int, **kw):
    remote = ray.remote(Toy).options(max_concurrency=4)
    return [remote.remote(f"actor-{i}", **kw) for i in range(n)], [f"actor-{i}" for i in range(n)]


@pytest.mark.parametrize("speculation", [True, False])
def test_a_straggling_shard_gets_a_copy_and_is_yielded_once(ray_session, tmp_path, speculation):
    ray = ray_session
    flag = tmp_path / "first-run-of-shard-6-is-slow"
    flag.write_text("")
    # shard 6 straggles on its first actor (1.5 s, 0.05 s elsewhere); shard 7 is slow everywhere
    # (3.5 s), so the job is still running when shard 6's original comes back and is dropped
    actors, names = toys(ray, 4, slow_s=1.5, flag=str(flag), slow_shard=6, always_slow=(7,), slower_s=3.5)
    ray.get([a.info.remote() for a in actors])
    scheduler = ShardScheduler(actors, names, in_flight=1, speculation=speculation, speculation_factor=1.5)
    got = [r.shard for r in scheduler.run(shards(8))]
    assert sorted(got) == list(range(8)), got  # each shard yielded exactly once
    assert not flag.exists()  # shard 6's first run was the slow one
    outcomes = Counter((t["shard"], t["outcome"]) for t in scheduler.timeline)
    if speculation:
        assert scheduler.speculated >= 2 and scheduler.speculative_wins >= 1, scheduler.timeline
        # shard 6: its copy won, and its original's result came back and was dropped
        assert outcomes[(6, "ok")] == 1 and outcomes[(6, "dropped")] == 1, [sorted(t.items()) for t in scheduler.timeline]
        assert [t["copy"] for t in scheduler.timeline if (t["shard"], t["outcome"]) == (6, "ok")] == [True]
        assert scheduler.dropped_copies >= 1
    else:
        assert scheduler.speculated == 0 and scheduler.dropped_copies == 0
        assert outcomes[(6, "ok")] == 1 and not any(t["copy"] for t in scheduler.timeline)
    for a in actors:
        ray.kill(a)


def test_actors_that_join_mid_run_take_shards_and_idle_ones_are_released(ray_session):
    ray = ray_session
    remote = ray.remote(Toy).options(max_concurrency=4, num_cpus=0)
    pool = ActorFleet(lambda name: remote.remote(name, delay_s=0.05),
                     Placement(ActorShape(cpus=0.0), ask=1, maximum=3, growable=True))
    pool.ask(1)
    first = pool.wait_first(timeout_s=60)
    assert len(first) == 1
    (handle, name, _), = first
    scheduler = ShardScheduler([handle], [name], in_flight=2, pool=pool, speculation=False)
    got = Counter(r.shard for r in scheduler.run(shards(200)))
    assert sorted(got) == list(range(200)) and set(got.values()) == {1}
    assert pool.asked == 3 and len(scheduler.names) == 3, scheduler.names  # grew to the maximum, no further
    late = [n for n in scheduler.names if n != name]
    assert all(scheduler.shards_per_actor[n] >= 5 for n in late), scheduler.shards_per_actor
    # the queue ran dry before the last shards finished: idle actors went before the end
    assert scheduler.released and set(scheduler.released) <= set(scheduler.names)
    assert pool.pending == 0
    pool.shutdown(scheduler.actors)


def test_an_actor_no_node_can_host_stops_the_job_naming_what_was_asked(ray_session):
    ray = ray_session
    shape = ActorShape(cpus=1.0, resource="tpu_v9")
    remote = ray.remote(Toy).options(**shape.options())
    pool = ActorFleet(lambda name: remote.remote(name), Placement(shape, ask=1, maximum=None, growable=True))
    pool.ask(1)
    t0 = time.monotonic()
    with pytest.raises(SetupError) as err:
        pool.wait_first(timeout_s=1.5)
    assert 1.4 < time.monotonic() - t0 < 30
    message = str(err.value)
    assert "within 1.5 s (--actor-wait)" in message and "asks for {CPU: 1, tpu_v9: 1}" in message, message
    assert "alive nodes: 1 x {CPU: 2" in message, message
    assert pool.pending == 0 and pool.cancelled == 1


def test_actor_range_options_are_checked():
    base = dict(task="coco", data_root="d", model="m.onnx", output="o")
    with pytest.raises(ConfigError, match=r"min_actors \(4\) > max_actors \(2\)"):
        JobConfig(**base, min_actors=4, max_actors=2)
    with pytest.raises(ConfigError, match="not both"):
        JobConfig(**base, actors=2, max_actors=4)
    with pytest.raises(ConfigError, match="speculation_factor: must be > 1"):
        JobConfig(**base, speculation_factor=1.0)
    with pytest.raises(ConfigError, match="actor_wait_s: must be > 0"):
        JobConfig(**base, actor_wait_s=0)


def test_the_cluster_yaml_submit_line_asks_for_what_its_gpu_workers_offer(monkeypatch):
    """cluster.yaml's documented `rayinfer submit` line, parsed by the CLI, on that cluster
    with no worker up yet (only the CPU-0 head): one actor is asked for, shaped so that one
    fits a `gpu_worker` node, so the autoscaler's answer to it is that node type."""
    import shlex

    import ray
    import yaml

    from rayinfer.jobs.cli import build_parser, config_from_args
    from rayinfer.jobs.placement import plan_placement

    text = (Path(__file__).resolve().parent.parent / "cluster.yaml").read_text()
    lines = [ln.lstrip("# ").rstrip("\\ ").strip() for ln in text.splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("rayinfer submit coco"))
    command = " ".join(lines[start:start + 3]).replace("YOUR-BUCKET", "bucket")
    args = build_parser().parse_args(shlex.split(command)[1:])
    cfg = config_from_args(args)
    nodes = yaml.safe_load(text)["available_node_types"]
    head = {"Alive": True, "Resources": dict(nodes["head"]["resources"])}
    monkeypatch.setattr(ray, "nodes", lambda: [head])
    placement = plan_placement(cfg, growable=True)
    worker = nodes["gpu_worker"]["resources"]
    assert placement.ask == 1 and placement.maximum is None
    assert placement.shape.demand() == {"CPU": 8, "GPU": 1} and placement.shape.fits(worker) == 1
    assert placement.shape.fits(nodes["head"]["resources"]) == 0

"""One-off costs are paid when an actor starts, not while its device waits.

Two regressions these guard against were found with py-spy in the scale benchmark:
pyarrow imports pandas on its first table (0.26-0.4 s of CPU holding the GIL, which with
64 actors on 2 cores cut efficiency to 38%), and a job-level `runtime_env` that kept
Ray from using its pre-started workers (1.07 s vs 0.33 s to start two actors). An actor
now builds its tables from numpy buffers and returns them as Arrow IPC streams
(actors/rows.py), so it never imports pandas at all: not at start, not in a shard, not
when Ray serialises its result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rayinfer.actors.actor import InferenceActor

PROJECT_ROOT = Path(__file__).resolve().parent.parent

FIRST_SHARD = """
import json, sys
from rayinfer.actors.actor import InferenceActor
from rayinfer.datasets.base import Sample
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.driver import check_setup


cfg = JobConfig(task="null", data_root=".", model="sim://?latency_ms=0&capacity=2&input=1x1&output=1x1",
                output="unused", limit=8)
setup = check_setup(cfg)
actor = InferenceActor(cfg, "a", setup.dataset, setup.family)
before = set(sys.modules)
result = actor.process(0, [Sample(f"{i}", "") for i in range(8)])
actor.close()
imported = sorted(m for m in set(sys.modules) - before if not m.startswith("_"))
pandas_in_actor = "pandas" in sys.modules
print(json.dumps({"rows": result.rows.num_rows, "errors": result.errors.num_rows, "imported": imported,
                  "pandas_in_actor": pandas_in_actor}))
"""


def test_first_shard_imports_nothing(tmp_path):
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", FIRST_SHARD], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rows"] == 8 and result["errors"] == 0
    assert result["imported"] == [], f"modules imported while the first shard ran: {result['imported']}"
    assert not result["pandas_in_actor"], "the actor imported pandas (pyarrow does on its first conversion)"


def test_local_ray_gets_no_runtime_env_and_the_driver_environment_is_restored(monkeypatch):
    """`init_local_ray` starts Ray loopback-only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 for Ray's
    own processes) with no job-level runtime_env; the driver's environment is as it was
    afterwards, also when ray.init fails."""
    import ray

    from rayinfer.jobs.cluster import init_local_ray

    seen: list[str | None] = []

    def fake_init(**kwargs):
        seen.append(os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"))
        assert "runtime_env" not in kwargs
        if len(seen) == 2:
            raise RuntimeError("cannot start Ray")

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr("rayinfer.jobs.reaper.watch", lambda: None)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    init_local_ray(num_cpus=1)
    assert seen[0] == "0" and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "1"
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    with pytest.raises(RuntimeError):
        init_local_ray(num_cpus=1)
    assert seen[1] == "0" and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ


def test_workers_of_a_local_ray_import_the_installed_package(ray_session):
    import ray

    import rayinfer.datasets

    @ray.remote(num_cpus=0)
    def where() -> str:
        import rayinfer.datasets

        return rayinfer.datasets.__file__

    assert ray.get(where.remote(), timeout=60) == rayinfer.datasets.__file__


class _ModuleProbe(InferenceActor):
    """The inference actor, plus a look at what its process has imported."""

    def imported(self) -> list[str]:
        return sorted(sys.modules)


def test_an_actor_under_ray_never_imports_pandas(ray_session, tmp_path):
    """Through Ray, with string and list columns: Ray's own serializer for Arrow tables
    imports pandas when it copies such a column's offsets (`pyarrow.compute.subtract`),
    so a bare `pa.Table` in the result would import it in the actor."""
    import ray

    from rayinfer.datasets.synthetic import write_coco
    from rayinfer.jobs.config import JobConfig
    from rayinfer.jobs.driver import check_setup
    from tests.conftest import make_const_detector

    root = write_coco(tmp_path / "coco", n_images=4, seed=5)
    model = make_const_detector(tmp_path / "det.onnx", 64, np.array([[32, 32, 20, 10, 0, 0.9]]))
    cfg = JobConfig(task="coco", data_root=str(root), model=str(model), output=str(tmp_path / "out"))
    setup = check_setup(cfg)
    actor = ray.remote(_ModuleProbe).options(num_cpus=1).remote(cfg, "probe", setup.dataset, setup.family)
    try:
        result = ray.get(actor.process.remote(0, setup.samples), timeout=120)
        assert result.rows.num_rows == 4 and result.errors.num_rows == 0
        assert result.rows.column("bbox").to_pylist()[0], "the rows carry list columns"
        assert "pandas" not in ray.get(actor.imported.remote(), timeout=60)
    finally:
        ray.kill(actor)

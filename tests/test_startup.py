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

import numpy as np

from actors.actor import InferenceActor
from jobs import PROJECT_ROOT

FIRST_SHARD = """
import json, sys
from actors.actor import InferenceActor
from datasets.base import Sample
from jobs.config import JobConfig

cfg = JobConfig(task="null", data_root=".", model="sim://?latency_ms=0&capacity=2&input=1x1&output=1x1",
                output="unused", limit=8)
actor = InferenceActor(cfg, "a")
before = set(sys.modules)
result = actor.process(0, [Sample(f"{i}", "") for i in range(8)])
actor.close()
imported = sorted(m for m in set(sys.modules) - before if not m.startswith("_"))
pandas_in_actor = "pandas" in sys.modules
print(json.dumps({"rows": result.records.num_rows, "errors": result.errors.num_rows, "imported": imported,
                  "pandas_in_actor": pandas_in_actor}))
"""


def test_first_shard_imports_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    out = subprocess.run([sys.executable, "-c", FIRST_SHARD], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rows"] == 8 and result["errors"] == 0
    assert result["imported"] == [], f"modules imported while the first shard ran: {result['imported']}"
    assert not result["pandas_in_actor"], "the actor imported pandas (pyarrow does on its first conversion)"


def test_local_ray_gets_the_project_path_through_its_environment(monkeypatch):
    """Workers inherit PYTHONPATH from the Ray that `init_local_ray` starts; the driver's
    own environment is as it was afterwards (also when ray.init fails)."""
    import ray

    from jobs.driver import init_local_ray

    seen: list[str | None] = []

    def fake_init(**kwargs):
        seen.append(os.environ.get("PYTHONPATH"))
        assert "runtime_env" not in kwargs
        if len(seen) == 2:
            raise RuntimeError("cannot start Ray")

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    init_local_ray(num_cpus=1)
    assert seen[0] == os.pathsep.join([str(PROJECT_ROOT), "/somewhere/else"])
    assert os.environ["PYTHONPATH"] == "/somewhere/else"
    monkeypatch.delenv("PYTHONPATH")
    try:
        init_local_ray(num_cpus=1)
    except RuntimeError:
        pass
    assert seen[1] == str(PROJECT_ROOT)
    assert "PYTHONPATH" not in os.environ


def test_workers_of_a_local_ray_import_this_project_first(ray_session):
    import ray

    @ray.remote(num_cpus=0)
    def where() -> tuple[list[str], str, bool]:
        import datasets

        return sys.path, os.environ.get("PYTHONPATH", ""), bool(getattr(datasets, "IS_RAYINFER", False))

    path, pythonpath, ours = ray.get(where.remote(), timeout=60)
    assert ours
    assert pythonpath.split(os.pathsep)[0] == str(PROJECT_ROOT)
    site = [i for i, p in enumerate(path) if p.endswith("site-packages")]
    assert path.index(str(PROJECT_ROOT)) < min(site)


class _ModuleProbe(InferenceActor):
    """The inference actor, plus a look at what its process has imported."""

    def imported(self) -> list[str]:
        return sorted(sys.modules)


def test_an_actor_under_ray_never_imports_pandas(ray_session, tmp_path):
    """Through Ray, with string and list columns: Ray's own serializer for Arrow tables
    imports pandas when it copies such a column's offsets (`pyarrow.compute.subtract`),
    so a bare `pa.Table` in the result would import it in the actor."""
    import ray

    from datasets.synthetic import write_coco
    from jobs.config import JobConfig
    from actors.tasks import build_dataset
    from tests.conftest import make_const_detector

    root = write_coco(tmp_path / "coco", n_images=4, seed=5)
    model = make_const_detector(tmp_path / "det.onnx", 64, np.array([[32, 32, 20, 10, 0, 0.9]]))
    cfg = JobConfig(task="coco", data_root=str(root), model=str(model), output=str(tmp_path / "out"))
    actor = ray.remote(_ModuleProbe).options(num_cpus=1).remote(cfg, "probe")
    try:
        result = ray.get(actor.process.remote(0, build_dataset(cfg).samples()), timeout=120)
        assert result.records.num_rows == 4 and result.errors.num_rows == 0
        assert result.records.column("bbox").to_pylist()[0], "the rows carry list columns"
        assert "pandas" not in ray.get(actor.imported.remote(), timeout=60)
    finally:
        ray.kill(actor)

"""One-off costs are paid when an actor starts, not while its device waits.

Two regressions these guard against were found with py-spy in the scale benchmark:
pyarrow imports pandas on its first table (0.4 s+ of CPU holding the GIL, which with
64 actors on 2 cores cut efficiency to 38%), and a job-level `runtime_env` that kept
Ray from using its pre-started workers (1.07 s vs 0.33 s to start two actors).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
print(json.dumps({"rows": result.records.num_rows, "errors": result.errors.num_rows,
                  "imported": sorted(m for m in set(sys.modules) - before if not m.startswith("_"))}))
"""


def test_first_shard_imports_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    out = subprocess.run([sys.executable, "-c", FIRST_SHARD], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rows"] == 8 and result["errors"] == 0
    assert result["imported"] == [], f"modules imported while the first shard ran: {result['imported']}"


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

"""The OpenVINO backend: its own AsyncInferQueue, `--runtime` choice and probe, bad input,
and the same accuracy as ONNX Runtime on the real models."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from rayinfer.actors.backends import candidates, choose_runtime, open_model
from rayinfer.actors.backends.onnxruntime import OnnxModel
from rayinfer.actors.model import InputError, ModelError
from rayinfer.datasets.base import SetupError
from rayinfer.jobs.config import JobConfig
from tests.conftest import ROOT, make_const_detector, need_shared

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install -e '.[test]' installs it)")

from rayinfer.actors.backends.openvino import OpenVinoModel, OpenVinoQueue  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def test_queue_is_openvinos_own_and_gives_the_same_outputs(heavy_model):
    model = OpenVinoModel(str(heavy_model), hint="throughput", threads=2)
    assert model.optimal_requests >= 1 and model.device == "cpu"
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((64, 512)).astype(np.float32) for _ in range(12)]
    reference = OnnxModel(heavy_model)
    got: dict[int, np.ndarray] = {}
    lock = threading.Lock()

    def done(request, index):
        assert request.error is None and request.latency > 0
        with lock:
            got[index] = request.outputs[0]

    with OpenVinoQueue(model, jobs=0) as queue:
        assert isinstance(queue._queue, ov.AsyncInferQueue)
        assert len(queue) == model.optimal_requests  # jobs=0: OpenVINO's OPTIMAL_NUMBER_OF_INFER_REQUESTS
        queue.set_callback(done)
        for i, x in enumerate(inputs):
            queue.start_async({"x": x}, i)
        assert queue.wait_all(60)
        assert queue.completed == 12 and queue.failed == 0 and queue.in_flight == 0
        assert queue.busy_seconds > 0
    assert sorted(got) == list(range(12))
    for i, x in enumerate(inputs):
        np.testing.assert_allclose(got[i], reference.run({"x": x})[0], rtol=1e-3, atol=1e-3)


def test_a_raising_callback_is_counted_and_the_process_goes_on(scale_model):
    """An exception escaping an OpenVINO callback aborts the process: the queue catches it."""
    model = OpenVinoModel(str(scale_model), threads=1)
    seen = []

    def callback(request, i):
        seen.append(i)
        if i == 1:
            raise RuntimeError("callback bug")

    with OpenVinoQueue(model, jobs=2) as queue:
        queue.set_callback(callback)
        for i in range(4):
            queue.start_async(np.ones((1, 4), np.float32), i)
        assert queue.wait_all(30)
        assert queue.callback_errors == 1 and sorted(seen) == [0, 1, 2, 3]
        with pytest.raises(InputError, match="input 'x'"):  # checked in the caller, naming the input
            queue.start_async(np.ones((1, 5), np.float32))
    with pytest.raises(Exception, match="closed"):
        queue.start_async(np.ones((1, 4), np.float32))


def test_ir_files_and_their_errors(scale_model, tmp_path):
    ir = tmp_path / "scale.xml"
    ov.save_model(ov.Core().read_model(str(scale_model)), str(ir))
    model = OpenVinoModel(str(ir), threads=1)
    np.testing.assert_allclose(model.run({"x": np.ones((1, 4), np.float32)})[0], 2.0)
    assert [b.name for b in candidates(str(ir))] == ["openvino"]  # IR is OpenVINO's alone
    ir.with_suffix(".bin").unlink()
    with pytest.raises(ModelError, match=r"scale.xml: OpenVINO IR needs its weights file scale.bin"):
        OpenVinoModel(str(ir))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ModelError, match="OpenVINO cannot read .*bad.onnx"):
        OpenVinoModel(str(bad))


def test_cli_refuses_bad_models_in_one_line(tmp_path):
    """`--runtime openvino` with a model it cannot read, an IR without its .bin, and the
    package missing: one line naming the file or the package, exit 2."""
    root = tmp_path / "data"
    from rayinfer.datasets.synthetic import write_coco

    write_coco(root, n_images=2, seed=1)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    xml = tmp_path / "m.xml"
    xml.write_text("<net/>")
    good = make_const_detector(tmp_path / "det.onnx", 32, np.array([[16, 16, 8, 8, 0, 0.9]]))
    blocked = "import sys; sys.modules['openvino'] = None; from rayinfer.jobs.cli import main; sys.exit(main())"
    cases = [
        (["-m", "rayinfer.jobs.cli"], str(bad), "bad.onnx"),
        (["-m", "rayinfer.jobs.cli"], str(xml), "m.xml: OpenVINO IR needs its weights file m.bin"),
        (["-c", blocked], str(good), "openvino package is not installed"),
    ]
    for entry, model, expected in cases:
        args = [sys.executable, *entry, "run", "coco", "--data-root", str(root), "--model", model,
                "--runtime", "openvino", "--output", str(tmp_path / "out"), "--quiet"]
        proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and expected in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr


def test_auto_probes_once_and_caches_the_choice(heavy_model, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYINFER_CACHE_DIR", str(tmp_path / "cache"))
    cfg = JobConfig(task="null", data_root=".", model=str(heavy_model), output="o")
    assert [b.name for b in candidates(cfg.model)] == ["onnxruntime", "openvino"]
    model, plan, runtime = open_model(cfg, cpus=2)
    assert set(runtime.probe) == {"onnxruntime", "openvino"} and not runtime.probe_cached
    assert runtime.name == max(runtime.probe, key=runtime.probe.get)  # the faster, as measured
    assert all(rate > 0 for rate in runtime.probe.values())
    cache = json.loads((tmp_path / "cache/runtime-probes.json").read_text())
    assert [e["choice"] for e in cache.values()] == [runtime.name]
    again = open_model(cfg, cpus=2).runtime
    assert again.probe_cached and again.name == runtime.name and again.probe == runtime.probe
    # the job's probe task asks choose_runtime: the cached choice, and no model built for it
    built = []
    for backend in candidates(cfg.model):
        monkeypatch.setattr(backend, "build", lambda *a, _b=backend: built.append(_b.name))
    assert choose_runtime(cfg, cpus=2) == again and built == []
    monkeypatch.undo()
    monkeypatch.setenv("RAYINFER_CACHE_DIR", str(tmp_path / "cache"))
    # another CPU count is other hardware as far as the probe knows: measured again
    assert not open_model(cfg, cpus=1).runtime.probe_cached
    # a runtime named, or a GPU asked for: nothing measured
    assert open_model(dataclasses.replace(cfg, runtime="openvino"), cpus=2).runtime.probe is None
    gpu = open_model(dataclasses.replace(cfg, runtime_options={"onnxruntime": {"providers": ("cuda", "cpu")}}),
                     cpus=2).runtime
    assert gpu.name == "onnxruntime" and gpu.probe is None


def test_auto_skips_a_runtime_that_cannot_load_the_model(scale_model, caplog):
    """Under auto a runtime that fails to load the model is skipped, with a warning saying why."""
    import logging

    from rayinfer.actors.backends import pick
    from rayinfer.actors.backends.onnxruntime import BACKEND as ORT

    class Refuses:
        name = "refuses"

        @staticmethod
        def device(cfg):
            return "cpu"

        @staticmethod
        def build(cfg, plan, cpus):
            raise ModelError(f"cannot load {cfg.model}: unsupported operator Foo")

        @staticmethod
        def versions():
            return {"refuses": "0"}

    cfg = JobConfig(task="null", data_root=".", model=str(scale_model), output="o")
    with caplog.at_level(logging.WARNING):
        opened = pick([Refuses, ORT], cfg, cpus=1)
    assert opened.runtime.name == "onnxruntime" and opened.runtime.probe is None
    assert "refuses cannot run" in caplog.text and "unsupported operator Foo" in caplog.text
    with pytest.raises(SetupError, match="no installed runtime can run"):
        pick([Refuses], cfg, cpus=1)


# -- the same numbers whichever runtime (real models) -----------------------------------------

COCO_MODELS = ["yolov8n_int8.onnx", "yolov8n_fp32.onnx", "yolox_nano.onnx"]


def _metrics(task, root, model, out, runtime):
    from rayinfer.jobs.driver import run_job

    outcome = run_job(JobConfig(task=task, data_root=str(root), model=str(model), output=str(out), runtime=runtime,
                                progress=False, report=False))
    run = json.loads((out / "run.json").read_text())
    assert run["runtime"]["name"] == runtime and run["runtime"]["version"]
    return outcome.metrics


@pytest.mark.shared
@pytest.mark.slow  # two whole COCO-mini jobs per model (about 50 s in all): in .ci/run's slow tier
@pytest.mark.parametrize("name", COCO_MODELS)
def test_openvino_matches_onnxruntime_on_coco(ray_session, tmp_path, name):
    root = need_shared("data", "coco-val2017-mini")
    model = need_shared("models", name)
    ort_m = _metrics("coco", root, model, tmp_path / "ort", "onnxruntime")
    ov_m = _metrics("coco", root, model, tmp_path / "ov", "openvino")
    assert ov_m["images"] == ort_m["images"] == 79
    assert abs(ov_m["AP"] - ort_m["AP"]) <= 0.005, (ov_m["AP"], ort_m["AP"])


@pytest.mark.shared
def test_openvino_matches_onnxruntime_on_nyu(ray_session, tmp_path):
    root = need_shared("data", "nyu-depth-v2-mini")
    model = need_shared("models", "fastdepth_nyu_224_fp32.onnx")
    ort_m = _metrics("nyu", root, model, tmp_path / "ort", "onnxruntime")
    ov_m = _metrics("nyu", root, model, tmp_path / "ov", "openvino")
    for key in ("abs_rel", "sq_rel", "rmse_log", "log10", "delta1", "delta2", "delta3"):
        assert abs(ov_m[key] - ort_m[key]) <= 0.005, key
    assert abs(ov_m["rmse"] - ort_m["rmse"]) <= 0.02


def test_rayinfer_bench_json(heavy_model):
    """`rayinfer bench --json`: one object, a run per runtime x request count, latency percentiles."""
    proc = subprocess.run([sys.executable, "-m", "rayinfer.jobs.cli", "bench", "--model", str(heavy_model),
                           "--requests", "1,auto", "--seconds", "0.3", "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["model"] == str(heavy_model)
    assert [(r["runtime"], r["requested"]) for r in result["runs"]] == [
        ("onnxruntime", "1"), ("onnxruntime", "auto"), ("openvino", "1"), ("openvino", "auto")]
    for r in result["runs"]:
        lat = r["latency_ms"]
        assert r["img_s"] > 0 and r["requests"] >= 1
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert [r["requests"] for r in result["runs"] if r["requested"] == "1"] == [1, 1]
    bad = subprocess.run([sys.executable, "-m", "rayinfer.jobs.cli", "bench", "--model", str(heavy_model),
                          "--requests", "0"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "not a positive count" in bad.stderr


def test_auto_gives_every_actor_of_a_job_the_same_runtime(ray_session, tmp_path):
    """Measured once per job (a Ray task with one actor's CPUs): two actors never run two runtimes."""
    from rayinfer.datasets.synthetic import write_coco
    from rayinfer.jobs.driver import run_job

    root = write_coco(tmp_path / "data", n_images=8, seed=2)
    model = make_const_detector(tmp_path / "det.onnx", 64, np.array([[32, 32, 20, 10, 0, 0.9]]))
    outcome = run_job(JobConfig(task="coco", data_root=str(root), model=str(model), output=str(tmp_path / "out"),
                                actors=2, shard_size=2, progress=False, report=False))
    run = outcome.run
    assert run["config"]["runtime"] == "auto"  # as the user asked
    assert {a["runtime"]["name"] for a in run["actors"]} == {run["runtime"]["name"]}
    assert "per_actor" not in run["runtime"]
    assert set(run["runtime"]["probe"]) == {"onnxruntime", "openvino"}


def test_a_choice_cached_on_this_one_machine_cluster_is_read_by_the_driver(ray_session, heavy_model, tmp_path,
                                                                           monkeypatch):
    """On a one-node cluster that is this machine, a second job reads the cached choice in the
    driver instead of sending a probe task (a worker importing both runtimes to read a file);
    elsewhere, or for an actor this node cannot hold, the task asks on an actor's node."""
    from rayinfer.jobs.placement import ActorShape, _remembered_here, resolve_runtime

    monkeypatch.setenv("RAYINFER_CACHE_DIR", str(tmp_path / "cache"))
    cfg = JobConfig(task="null", data_root=".", model=str(heavy_model), output="o")
    shape = ActorShape(cpus=1)
    assert _remembered_here(cfg, shape) is None  # nothing measured yet
    measured = open_model(cfg, cpus=1).runtime  # what an actor of that shape measures and caches
    here = _remembered_here(cfg, shape)
    assert here == measured._replace(probe_cached=True).record()
    resolved, probe = resolve_runtime(cfg, shape, timeout_s=30)
    assert resolved.runtime == measured.name and probe == here
    assert _remembered_here(cfg, ActorShape(cpus=64)) is None  # no node here holds that actor
    assert _remembered_here(cfg, ActorShape(cpus=2)) is None  # measured for 1 CPU, not 2

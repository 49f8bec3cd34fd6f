"""Whole jobs on an embedded Ray: outputs, bad samples, resume, actor counts, reference accuracy."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayinfer.datasets.base import SetupError
from rayinfer.datasets.synthetic import write_coco, write_nyu
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.driver import EXIT_OK, EXIT_PARTIAL, run_job
from tests.conftest import inference_actor, make_const_depth, make_const_detector, need_shared

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    root = write_coco(tmp_path_factory.mktemp("coco"), n_images=20, seed=3)
    model = make_const_detector(root / "det.onnx", 64, np.array([[32, 32, 20, 10, 0, 0.9], [20, 40, 8, 8, 2, 0.6]]))
    return root, model


def coco_cfg(root: Path, model: Path, out: Path, **kw) -> JobConfig:
    base = dict(task="coco", data_root=str(root), model=str(model), output=str(out), shard_size=4, progress=False,
                report=False)
    return JobConfig(**{**base, **kw})


def test_coco_job_writes_every_output(ray_session, coco_set, tmp_path):
    from pycocotools.coco import COCO

    root, model = coco_set
    outcome = run_job(coco_cfg(root, model, tmp_path / "out"))
    out = tmp_path / "out"
    assert outcome.exit_code == EXIT_OK and outcome.samples == 20 and outcome.errors == 0
    table = pq.read_table(out / "predictions")
    assert sorted(table.column("sample_id").to_pylist()) == sorted(str(1000 + i) for i in range(20))
    assert len(list((out / "predictions").glob("shard-*.parquet"))) == 5
    assert pq.read_table(out / "errors.parquet").num_rows == 0
    first = table.slice(0, 1).to_pylist()[0]
    assert first["category_id"] == [1, 7]  # class 0 -> category 1, class 2 -> category 7
    assert np.allclose(first["bbox"][0], [110, 95, 100, 50], atol=1e-3)  # letterboxed 320x240 -> 64x64
    gt = COCO(str(root / "annotations/instances_val2017.json"))
    results = gt.loadRes(str(out / "coco_results.json"))
    assert len(results.getAnnIds()) == 40
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
            "per_class_AP"} <= metrics.keys()
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["task"] == "coco" and run["versions"]["ray"]
    assert run["counts"]["predictions"] == 20 and run["throughput"]["samples_per_s"] > 0
    assert sum(a["samples"] for a in run["actors"]) == 20
    assert all(0 <= a["busy_fraction"] <= 1.0 for a in run["actors"])
    # on the CPU the host does the inference too: its CPU per sample, no "cores to keep it busy"
    assert all(a["host_ms_per_sample"] > 0 and a["host_cores_needed"] is None for a in run["actors"])
    assert set(run["timings"]["stage_mean_ms"]) == {"load", "preprocess", "queue", "infer", "postprocess"}
    spread = run["timings"]["stage_percentiles_ms"]
    assert set(spread) == set(run["timings"]["stage_mean_ms"])
    infer = pq.read_table(out / "predictions", columns=["infer_ms"]).column(0).to_numpy()
    assert spread["infer"]["p50"] == pytest.approx(float(np.percentile(infer, 50)), abs=1e-3)
    assert spread["infer"]["p50"] <= spread["infer"]["p90"] <= spread["infer"]["p99"]
    assert run["runtime"]["name"] in ("onnxruntime", "openvino") and run["runtime"]["version"]


def test_reduced_scale_decode_keeps_boxes_in_the_original_images_pixels(ray_session, coco_set, tmp_path):
    """320x240 images into a 64x64 input: decoded at 1/4 (80x60) with --reduced-decode; the
    constant detector's boxes land where a full decode puts them, in 320x240 pixels."""
    root, model = coco_set
    outcome = run_job(coco_cfg(root, model, tmp_path / "out", options={"reduced_decode": True}))
    assert outcome.exit_code == EXIT_OK and outcome.errors == 0
    first = pq.read_table(tmp_path / "out" / "predictions").slice(0, 1).to_pylist()[0]
    assert (first["height"], first["width"]) == (240, 320)
    assert np.allclose(first["bbox"][0], [110, 95, 100, 50], atol=1e-3)
    assert outcome.run["task_options"]["reduced_decode"] is True


@pytest.mark.parametrize("reduced", [False, True])
def test_demo_detector_accuracy_with_and_without_reduced_scale_decode(ray_session, tmp_path, reduced):
    """The demo detector (128x128 input) on 240x320 images, decoded whole or at 1/2: AP stays
    near the full decode's (a wrong mapping or broken pixels would drop it far)."""
    from rayinfer.jobs.tasks.coco import CocoDetection

    root = write_coco(tmp_path / "coco", n_images=16, seed=11)
    m = run_job(coco_cfg(root, CocoDetection.demo_model, tmp_path / "out",
                         options={"reduced_decode": reduced})).metrics
    assert m["AP50"] > 0.8 and m["AP"] > 0.6, m


@pytest.mark.parametrize("preprocess_in", ["request", "loader"])
def test_bad_images_become_error_rows_and_the_job_completes(ray_session, coco_set, tmp_path, preprocess_in):
    src, model = coco_set
    root = tmp_path / "coco"
    shutil.copytree(src, root)
    images = sorted((root / "val2017").glob("*.jpg"))
    images[0].write_bytes(b"")  # 0 bytes
    data = images[1].read_bytes()
    images[1].write_bytes(data[: len(data) // 2])  # truncated
    images[2].write_bytes(b"\x89PNG not really" * 20)  # corrupt
    images[3].unlink()  # listed in the annotations, missing on disk
    outcome = run_job(coco_cfg(root, model, tmp_path / "out", preprocess_in=preprocess_in))
    assert outcome.exit_code == EXIT_PARTIAL and outcome.errors == 4
    errors = pq.read_table(tmp_path / "out/errors.parquet").to_pylist()
    by_file = {Path(e["file"]).name: e for e in errors}
    assert set(by_file) == {p.name for p in images[:4]}
    assert all(e["stage"] == "load" and e["file"].startswith("val2017/") for e in errors)
    assert "empty file" in by_file[images[0].name]["message"]
    assert "truncated JPEG" in by_file[images[1].name]["message"]
    assert "not a decodable image" in by_file[images[2].name]["message"]
    assert "file not found" in by_file[images[3].name]["message"]
    predictions = pq.read_table(tmp_path / "out/predictions")
    assert predictions.num_rows == 16
    run = json.loads((tmp_path / "out/run.json").read_text())
    assert run["counts"]["errors"] == 4 and run["counts"]["predictions"] == 16


def test_samples_are_prepared_in_the_request_on_cpu_and_ahead_of_it_for_a_device(coco_set, tmp_path):
    """On the CPU the request's own thread reads and preprocesses (the cores are the
    device: overlap would only preempt inference); on a device, loader threads do, so
    the next input is ready when a request finishes."""
    import threading

    root, model = coco_set
    sim = "sim://?latency_ms=1&capacity=2&input=1x3x64x64&output=1x7x8"
    for model_uri, expected, thread_prefix in [(str(model), "request", "infer-request-"),
                                               (sim, "loader", "actor-loader")]:
        actor = inference_actor(coco_cfg(root, Path(model_uri) if "://" not in model_uri else model_uri,
                                         tmp_path / "out"), "actor")
        readers: set[str] = set()
        load = actor.dataset.load

        def spy(sample, load=load, readers=readers):
            readers.add(threading.current_thread().name)
            return load(sample)

        actor.dataset.load = spy
        try:
            result = actor.process(0, actor.dataset.samples()[:6])
        finally:
            actor.close()
        assert actor.info()["preprocess_in"] == expected
        assert result.rows.num_rows == 6 and result.errors.num_rows == 0
        assert readers and all(name.startswith(thread_prefix) for name in readers), readers
        assert all(result.rows.column(f"{stage}_ms").to_pylist() for stage in ("load", "preprocess", "infer"))


def test_an_actors_opencv_threads_are_its_cpus_not_the_nodes(coco_set, tmp_path):
    """OpenCV's own pool spans every core of the node (64 threads per actor on a 64-core
    node); an actor keeps it to the CPUs it was given."""
    import cv2

    root, model = coco_set
    before = cv2.getNumThreads()
    cv2.setNumThreads(64)  # OpenCV's default on a 64-core node
    try:
        actor = inference_actor(coco_cfg(root, model, tmp_path / "out"), "actor")
        actor.close()
        assert cv2.getNumThreads() == actor.cpus < 64
    finally:
        cv2.setNumThreads(before)


def test_one_two_and_four_actors_give_identical_predictions(ray_session, coco_set, tmp_path):
    root, model = coco_set
    tables = []
    for n in (1, 2, 4):
        # one runtime named: under auto, jobs with other CPUs per actor may measure another
        # runtime faster, and runtimes differ in the last digits (tests/test_openvino.py)
        run_job(coco_cfg(root, model, tmp_path / f"a{n}", actors=n, shard_size=3, runtime="onnxruntime"))
        t = pq.read_table(tmp_path / f"a{n}/predictions").select(["sample_id", "bbox", "score", "category_id"])
        tables.append(t.sort_by("sample_id"))
        run = json.loads((tmp_path / f"a{n}/run.json").read_text())
        assert len(run["actors"]) == n
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])


def test_resume_skips_committed_shards_and_refuses_a_changed_config(ray_session, coco_set, tmp_path):
    root, model = coco_set
    out = tmp_path / "out"
    cfg = coco_cfg(root, model, out)
    first = run_job(cfg)
    shards = sorted((out / "predictions").glob("shard-*.parquet"))
    for p in shards[2:]:  # as if the driver died after committing two shards
        p.unlink()
    (out / "metrics.json").unlink()
    with pytest.raises(SetupError, match="already holds a run"):
        run_job(cfg)
    resumed = run_job(dataclasses.replace(cfg, resume=True))
    assert resumed.run["counts"]["shards_resumed"] == 2
    assert resumed.run["counts"]["processed_this_run"] == 12
    assert resumed.metrics == first.metrics
    other = make_const_detector(tmp_path / "other.onnx", 64, np.array([[30, 30, 10, 10, 1, 0.5]]))
    with pytest.raises(SetupError, match="configuration changed .*model"):
        run_job(dataclasses.replace(cfg, resume=True, model=str(other)))
    with pytest.raises(SetupError, match="configuration changed .*iou_thres"):
        run_job(dataclasses.replace(cfg, resume=True, options={**cfg.options, "iou_thres": 0.5}))
    rerun = run_job(dataclasses.replace(cfg, overwrite=True))
    assert rerun.run["counts"]["shards_resumed"] == 0


def test_setup_errors_stop_before_any_work(ray_session, coco_set, tmp_path):
    root, model = coco_set
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("hello")
    with pytest.raises(SetupError, match="cannot load model"):
        run_job(coco_cfg(root, not_onnx, tmp_path / "o1"))
    from tests.conftest import make_onnx

    scalar_model = make_onnx(tmp_path / "scale.onnx", "scale")
    with pytest.raises(SetupError, match="not an image tensor|cannot tell the detection family"):
        run_job(coco_cfg(root, scalar_model, tmp_path / "o2"))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_nyu_job_on_synthetic_frames_with_a_bad_file(ray_session, tmp_path):
    root = write_nyu(tmp_path / "nyu", n_frames=4, size=(120, 160), seed=2)
    folder = root / "val/official"
    (folder / "zz_truncated.h5").write_bytes((folder / "00000.h5").read_bytes()[:1000])
    model = make_const_depth(tmp_path / "depth.onnx", 32, 2.0)
    cfg = JobConfig(task="nyu", data_root=str(root), model=str(model), output=str(tmp_path / "out"),
                    options={"profile": "resize"}, progress=False)
    outcome = run_job(cfg)
    assert outcome.exit_code == EXIT_PARTIAL and outcome.errors == 1
    table = pq.read_table(tmp_path / "out/predictions")
    assert table.num_rows == 4
    row = table.slice(0, 1).to_pylist()[0]
    depth = np.frombuffer(row["depth"], np.float16).reshape(row["height"], row["width"])
    assert depth.shape == (32, 32) and np.all(depth == np.float16(2.0))
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert set(metrics) >= {"abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3"}
    expected = np.mean(table.column("abs_rel").to_numpy())
    assert metrics["abs_rel"] == pytest.approx(expected)
    errors = pq.read_table(tmp_path / "out/errors.parquet").to_pylist()
    assert errors[0]["sample_id"] == "zz_truncated" and "not a readable HDF5" in errors[0]["message"]


# -- acceptance on the real models and data ----------------------------------------------
def _yolov8n_mini(tmp_path: Path, actors: int, report: bool) -> dict:
    root = need_shared("data", "coco-val2017-mini")
    model = need_shared("models", "yolov8n_int8.onnx")
    return run_job(JobConfig(task="coco", data_root=str(root), model=str(model), output=str(tmp_path / f"y{actors}"),
                             actors=actors, progress=False, runtime="onnxruntime",  # the reference's runtime
                             report=report)).metrics


@pytest.mark.shared
def test_yolov8n_reference_accuracy(ray_session, tmp_path):
    m = _yolov8n_mini(tmp_path, 1, report=True)
    assert m["images"] == 79
    assert abs(m["AP"] - 0.4245) <= 0.005 and abs(m["AP50"] - 0.5743) <= 0.005
    assert abs(m["AP75"] - 0.4614) <= 0.005 and abs(m["AR100"] - 0.6055) <= 0.005


@pytest.mark.shared
@pytest.mark.slow  # three whole COCO-mini jobs; test_one_two_and_four_actors_give_identical_predictions is the quick one
def test_yolov8n_metrics_identical_with_1_2_4_actors(ray_session, tmp_path):
    results = [_yolov8n_mini(tmp_path, n, report=False) for n in (1, 2, 4)]
    assert results[0]["images"] == 79
    assert results[1] == results[0] and results[2] == results[0]


@pytest.mark.shared
@pytest.mark.slow  # a whole COCO-mini job; YOLOX decoding is checked on synthetic outputs in the quick tier
def test_yolox_nano_reference_accuracy(ray_session, tmp_path):
    root = need_shared("data", "coco-val2017-mini")
    model = need_shared("models", "yolox_nano.onnx")
    m = run_job(JobConfig(task="coco", data_root=str(root), model=str(model), output=str(tmp_path / "x"),
                          progress=False)).metrics
    assert abs(m["AP"] - 0.314) <= 0.01 and abs(m["AP50"] - 0.496) <= 0.01


@pytest.mark.shared
def test_fastdepth_reference_metrics(ray_session, tmp_path):
    root = need_shared("data", "nyu-depth-v2-mini")
    model = need_shared("models", "fastdepth_nyu_224_fp32.onnx")
    m = run_job(JobConfig(task="nyu", data_root=str(root), model=str(model), output=str(tmp_path / "d"),
                          progress=False)).metrics
    reference = {"abs_rel": 0.1285, "sq_rel": 0.1127, "rmse_log": 0.1730, "log10": 0.0589,
                 "delta1": 0.8163, "delta2": 0.9594, "delta3": 0.9924}
    for key, value in reference.items():
        assert abs(m[key] - value) <= 0.005, key
    assert abs(m["rmse"] - 0.6245) <= 0.02
    assert abs(m["silog"] - 12.57) <= 0.5  # silog is x100; 0.005 in its natural unit
    assert m["images"] == 5 and m["evaluated_images"] == 5
    table = pq.read_table(tmp_path / "d/predictions")
    assert table.column("height").to_pylist() == [224] * 5



def test_each_actor_says_what_host_cpu_its_device_costs_and_the_cores_to_keep_it_busy(ray_session, coco_set,
                                                                                       tmp_path, capsys):
    from rayinfer.jobs.cli import _summary

    root, _ = coco_set
    output = np.zeros((1, 7, 8), np.float32)
    output[0, :4, 0] = [32, 32, 20, 10]  # one box, class 1 at 0.9: the host decodes it for every image
    output[0, 5, 0] = 0.9
    np.save(tmp_path / "out.npy", output)
    uri = f"sim://?latency_ms=5&capacity=2&input=1x3x64x64&output_file={tmp_path / 'out.npy'}"
    outcome = run_job(coco_cfg(root, uri, tmp_path / "out", actors=1))
    assert outcome.exit_code == EXIT_OK
    scores = pq.read_table(tmp_path / "out" / "predictions").column("score").to_pylist()
    assert len(scores) == 20 and all(s == [pytest.approx(0.9)] for s in scores)
    (actor,) = outcome.run["actors"]
    assert actor["device_rate"] == pytest.approx(400.0)  # 2 streams / 5 ms
    assert actor["host_ms_per_sample"] > 0
    assert actor["host_cores_needed"] == pytest.approx(actor["host_ms_per_sample"] / 1000 * 400, abs=0.01)
    _summary(outcome.metrics, outcome.run)
    line = next(li for li in capsys.readouterr().out.splitlines() if li.strip().startswith("actor-0"))
    assert "ms/sample" in line and "keeping its device at 400/s takes" in line, line

"""Exact by default (issue 42): with no runtime or precision flag a job computes at the model's
own precision on every runtime `--runtime auto` may pick, and so matches the independent
references in ../shared/README.md; a reduced precision is a choice the user makes and sees."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rayinfer.actors.backends import candidates
from rayinfer.jobs.config import ConfigError, JobConfig
from rayinfer.jobs.driver import run_job
from tests.conftest import ROOT, make_const_detector, need_shared

#: ../shared/README.md's reference figures and tolerances
COCO_INT8 = {"AP": 0.4245, "AP50": 0.5743, "AP75": 0.4614, "AR100": 0.6055}
NYU_FASTDEPTH = {"abs_rel": 0.1285, "sq_rel": 0.1127, "rmse_log": 0.1730, "log10": 0.0589,
                 "delta1": 0.8163, "delta2": 0.9594, "delta3": 0.9924}


def _installed(model: str) -> list[str]:
    return [b.name for b in candidates(model, "auto")]


def _openvino_has(unit: str) -> bool:
    try:
        import openvino as ov
    except ImportError:
        return False
    return unit in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _runtimes(model_name: str) -> list[str]:
    """auto (the default) and each installed runtime that runs an .onnx file."""
    return ["auto", *_installed(model_name)]


@pytest.mark.shared
@pytest.mark.parametrize("runtime", _runtimes("m.onnx"))
def test_nyu_default_precision_matches_the_reference_on_every_runtime(ray_session, tmp_path, runtime):
    root = need_shared("data", "nyu-depth-v2-mini")
    model = need_shared("models", "fastdepth_nyu_224_fp32.onnx")
    outcome = run_job(JobConfig(task="nyu", data_root=str(root), model=str(model), output=str(tmp_path / "d"),
                                runtime=runtime, progress=False, report=False))
    m = outcome.metrics
    for key, value in NYU_FASTDEPTH.items():
        assert abs(m[key] - value) <= 0.005, (key, m[key], outcome.run["runtime"])
    assert abs(m["rmse"] - 0.6245) <= 0.02 and abs(m["silog"] - 12.5702) <= 0.02, outcome.run["runtime"]
    assert outcome.run["runtime"]["precision"] == "model"
    if outcome.run["runtime"]["name"] == "openvino":  # what OpenVINO says it computed in
        assert all(a["runtime"]["inference_precision"] == "f32" for a in outcome.run["actors"])


COCO_FP32 = {"AP": 0.4254, "AP50": 0.5743, "AP75": 0.4621, "AR100": 0.6079}


def _auto_may_pick(model: str) -> list[str]:
    return [b.name for b in candidates(model, "auto", JobConfig(task="coco", data_root=".", model=model, output="o"))]


def _coco_cases() -> list:
    """(model, runtime, reference): the default (auto) on the int8 model in the quick tier; in
    the slow tier each runtime auto may pick for the int8 model, and every installed runtime
    for the fp32 one (ONNX Runtime's int8 run is also tests/test_jobs.py's quick test)."""
    cases = [("yolov8n_int8.onnx", "auto", COCO_INT8)]
    int8, fp32 = (need_shared_or_none("models", n) for n in ("yolov8n_int8.onnx", "yolov8n_fp32.onnx"))
    slow = pytest.mark.slow
    cases += [pytest.param("yolov8n_int8.onnx", r, COCO_INT8, marks=slow) for r in (_auto_may_pick(str(int8)) if int8 else [])]
    cases += [pytest.param("yolov8n_fp32.onnx", r, COCO_FP32, marks=slow) for r in (_installed(str(fp32)) if fp32 else [])]
    return cases


def need_shared_or_none(*parts: str):
    from tests.conftest import shared_dir

    path = shared_dir().joinpath(*parts)
    return path if path.exists() else None


@pytest.mark.shared
@pytest.mark.parametrize("name,runtime,reference", _coco_cases())
def test_coco_default_precision_matches_the_reference_on_every_runtime_auto_may_pick(ray_session, tmp_path, name,
                                                                                     runtime, reference):
    root = need_shared("data", "coco-val2017-mini")
    model = need_shared("models", name)
    outcome = run_job(JobConfig(task="coco", data_root=str(root), model=str(model), output=str(tmp_path / "c"),
                                runtime=runtime, progress=False, report=False))
    for key, value in reference.items():
        assert abs(outcome.metrics[key] - value) <= 0.005, (key, outcome.metrics[key], outcome.run["runtime"])
    assert outcome.run["runtime"]["precision"] == "model"
    assert "differs_from_model" not in outcome.run["runtime"]


def test_auto_leaves_out_a_runtime_that_computes_the_model_otherwise(tmp_path):
    """OpenVINO computes ONNX dynamic quantization (yolov8n_int8: DynamicQuantizeLinear ->
    ConvInteger) its own way: scores up to 0.2 and boxes up to 54 px from ONNX Runtime's on COCO
    images, AP75 0.4682 against the reference 0.4614. `auto` does not pick it for such a model;
    named, it runs and says so."""
    pytest.importorskip("openvino", reason="openvino is not installed")
    import numpy as np

    from rayinfer.actors.backends.openvino import ops_computed_otherwise
    from tests.conftest import save_graph

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = helper.make_tensor_value_info("w", TensorProto.INT32, [1, 4])
    plain = save_graph(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="ConvInteger")], "g", [x], [y]),
                       tmp_path / "plain.onnx", 13)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("MatMulInteger", ["q", "b", "z"], ["w"])]
    b = onnx.numpy_helper.from_array(np.eye(4, dtype=np.uint8), "b")
    quantized = save_graph(helper.make_graph(nodes, "g", [x], [w], [b]), tmp_path / "dyn.onnx", 13)
    assert ops_computed_otherwise(str(plain)) == []  # a node *named* ConvInteger is not one
    assert ops_computed_otherwise(str(quantized)) == ["DynamicQuantizeLinear", "MatMulInteger"]
    assert _auto_may_pick(str(plain)) == ["onnxruntime", "openvino"]
    assert _auto_may_pick(str(quantized)) == ["onnxruntime"]
    # named, it stays available (its speed is worth measuring), and says why its figures differ
    (chosen,) = candidates(str(quantized), "openvino",
                           JobConfig(task="null", data_root=".", model=str(quantized), output="o"))
    assert chosen.name == "openvino"


def test_openvino_is_asked_for_f32_unless_told_otherwise(heavy_model):
    """Left alone OpenVINO computes in bf16 on CPUs with bf16 units: the default asks for f32."""
    pytest.importorskip("openvino", reason="openvino is not installed")
    from rayinfer.actors.backends.openvino import OpenVinoModel

    model = OpenVinoModel(str(heavy_model), threads=1)
    assert model.precision == "model" and model.inference_precision in ("f32", "float32")
    assert model.details["inference_precision"] == "f32"
    assert JobConfig(task="null", data_root=".", model="m.onnx", output="o").precision == "model"


def test_a_precision_no_runtime_here_computes_is_one_line_and_exit_2(tmp_path, coco_det):
    root, model = coco_det
    out = tmp_path / "never"
    cases = [("--runtime", "onnxruntime", "--precision", "bf16")]  # ONNX Runtime on a CPU: never
    if not _openvino_has("BF16"):
        cases.append(("--precision", "bf16"))  # auto: no runtime here computes in bf16
    if not _openvino_has("FP16"):
        cases.append(("--runtime", "openvino", "--precision", "fp16"))
    for flags in cases:
        proc = subprocess.run([sys.executable, "-m", "rayinfer.jobs.cli", "run", "coco", "--data-root", str(root),
                               "--model", str(model), "--output", str(out), *flags],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 2, (flags, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"rayinfer: error: --precision {flags[-1]}"), (flags, lines)
        assert "leave --precision at model" in lines[0]
        assert not out.exists()  # nothing written
    with pytest.raises(ConfigError, match="precision: must be one of model, bf16, fp16"):
        JobConfig(task="coco", data_root=".", model="m.onnx", output="o", precision="f32")


def test_older_runs_precision_keys_still_load():
    for old, new in (("auto", "model"), ("f32", "model"), ("bf16", "bf16"), ("f16", "fp16")):
        cfg = JobConfig.from_dict({"task": "coco", "data_root": ".", "model": "m", "output": "o",
                                   "openvino_precision": old})
        assert cfg.precision == new


def test_a_reduced_precision_is_said_in_run_json_the_summary_and_the_report(ray_session, tmp_path, capsys):
    """The simulated device runs at any precision, so the words are checked on every machine;
    the real bf16 job below runs where the CPU has bf16 units."""
    from rayinfer.jobs.cli import _summary

    out = tmp_path / "bf16"
    outcome = run_job(JobConfig(task="null", data_root=str(tmp_path), model="sim://?latency_ms=1&capacity=2&input=1x1&output=1x1",
                                output=str(out), limit=4, progress=False, precision="bf16"))
    assert outcome.run["runtime"]["precision"] == "bf16"
    assert json.loads((out / "run.json").read_text())["config"]["precision"] == "bf16"
    _summary(outcome.metrics, outcome.run)
    said = "bf16: computed in reduced precision; metrics can differ from the model&#x27;s own"
    line = next(li for li in capsys.readouterr().out.splitlines() if li.startswith("runtime: "))
    assert said.replace("&#x27;", "'") in line, line
    assert said in (out / "report.html").read_text()


@pytest.mark.shared
def test_nyu_in_bf16_where_the_cpu_has_bf16_units(ray_session, tmp_path):
    if not _openvino_has("BF16"):
        pytest.skip("this CPU has no bf16 units (OpenVINO's OPTIMIZATION_CAPABILITIES): --precision bf16 is "
                    "refused here, as test_a_precision_no_runtime_here_computes_is_one_line_and_exit_2 checks")
    root = need_shared("data", "nyu-depth-v2-mini")
    model = need_shared("models", "fastdepth_nyu_224_fp32.onnx")
    outcome = run_job(JobConfig(task="nyu", data_root=str(root), model=str(model), output=str(tmp_path / "b"),
                                precision="bf16", progress=False, report=False))
    assert outcome.run["runtime"]["name"] == "openvino" and outcome.run["runtime"]["precision"] == "bf16"
    assert all(a["runtime"]["inference_precision"] == "bf16" for a in outcome.run["actors"])


@pytest.fixture
def coco_det(tmp_path):
    import numpy as np

    from rayinfer.datasets.synthetic import write_coco

    root = write_coco(tmp_path / "data", n_images=2, seed=3)
    model = make_const_detector(tmp_path / "det.onnx", 64, np.array([[32, 32, 20, 10, 0, 0.9]]))
    return root, model


def test_bench_on_a_dataset_gives_speed_and_accuracy_per_runtime_and_precision(coco_det):
    """`rayinfer bench --model M --data-root D --images N`: one row per runtime x precision it
    computes in, the task found from the folder's layout, a JSON list of the rows last."""
    root, model = coco_det
    proc = subprocess.run([sys.executable, "-m", "rayinfer.jobs.cli", "bench", "--model", str(model),
                           "--data-root", str(root), "--images", "2", "--seconds", "0.3"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    rows = json.loads(lines[-1])
    installed = _installed(str(model))
    assert [(r["runtime"], r["precision"]) for r in rows][:len(installed)] == [(n, "model") for n in installed]
    for r in rows:
        assert r["img_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
        assert set(r["metrics"]) == {"AP", "AP50", "P", "R"} and set(r["delta"]) == set(r["metrics"])
        assert r["metrics"] == rows[0]["metrics"] or r["precision"] != "model"  # the same model, the same numbers
    assert rows[0]["delta"] == dict.fromkeys(rows[0]["metrics"], 0.0)
    assert lines[0].startswith("coco on ") and "runtime" in lines[1] and "d AP" in lines[1]
    if not _openvino_has("BF16"):
        assert any(li.startswith("not run: openvino at bf16: OpenVINO's CPU") for li in lines)
    assert any(li.startswith("not run: onnxruntime at bf16") for li in lines)
    wrong = subprocess.run([sys.executable, "-m", "rayinfer.jobs.cli", "bench", "--model", str(model),
                            "--data-root", str(model.parent)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert wrong.returncode == 2 and "name the task with --task" in wrong.stderr

"""The Python API (issue 47): `import rayinfer; rayinfer.run(...)`, the same jobs, options and
one-line errors as the command line, inside a Ray session the caller already has."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import rayinfer
from rayinfer.datasets.synthetic import write_coco
from tests.conftest import ROOT, make_const_detector


@pytest.fixture(scope="module")
def coco_det(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    root = write_coco(tmp / "data", n_images=6, seed=11)
    model = make_const_detector(tmp / "det.onnx", 64, np.array([[32, 32, 20, 10, 0, 0.9]]))
    return root, model


def test_run_inside_the_callers_ray_gives_a_result_and_leaves_ray_running(ray_session, coco_det, tmp_path):
    import ray

    root, model = coco_det
    result = rayinfer.run("coco", data_root=str(root), model=str(model), output=str(tmp_path / "r"), shard_size=2,
                          conf_thres=0.25, runtime="onnxruntime", report=False)
    assert ray.is_initialized()  # the caller's session, left running
    here = ray.get_runtime_context().get_node_id()
    assert {a["node_id"] for a in result.run["actors"]} == {here}
    assert result.exit_code == 0 and result.output == str(tmp_path / "r")
    assert result.metrics == json.loads((tmp_path / "r/metrics.json").read_text())
    assert result.predictions.num_rows == result.run["counts"]["predictions"] == 6
    assert result.errors.num_rows == 0 and result.report is None
    assert result.run["task_options"]["conf_thres"] == 0.25  # a task option, as a keyword
    text = repr(result)
    assert text.startswith("Speed: ") and "6 samples, 0 errors" in text and "runtime: onnxruntime" in text
    assert text.endswith(f"Results saved to {tmp_path / 'r'}")
    metrics = rayinfer.evaluate("coco", predictions=tmp_path / "r", data_root=root)
    assert metrics["AP"] == result.metrics["AP"]
    deltas = rayinfer.compare(tmp_path / "r", tmp_path / "r")
    assert deltas["AP"] == (result.metrics["AP"], result.metrics["AP"], 0.0)


def test_a_bad_option_raises_the_command_lines_one_line(coco_det, tmp_path):
    root, model = coco_det
    cli = subprocess.run([sys.executable, "-m", "rayinfer.jobs", "run", "coco", "--data-root", str(root), "--model",
                          str(model), "--output", str(tmp_path / "x"), "--shard-size", "-1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    line = cli.stderr.strip().removeprefix("rayinfer: error: ")
    with pytest.raises(rayinfer.ConfigError) as raised:
        rayinfer.run("coco", data_root=str(root), model=str(model), output=str(tmp_path / "x"), shard_size=-1)
    assert str(raised.value) == line == "shard_size: must be >= 0, got -1"
    with pytest.raises(rayinfer.ConfigError, match="task 'coco' has no option depth_profile"):
        rayinfer.run("coco", data_root=str(root), model=str(model), output=str(tmp_path / "y"), depth_profile="x")
    with pytest.raises(rayinfer.SetupError, match="data root not found"):
        rayinfer.run("coco", data_root=str(tmp_path / "none"), model=str(model), output=str(tmp_path / "z"))


@pytest.mark.slow  # two demo jobs, each starting its own Ray
def test_the_demo_from_a_fresh_process_gives_the_clis_metrics(tmp_path):
    code = ("import json, sys, rayinfer; r = rayinfer.run('coco', output=sys.argv[1], runtime='onnxruntime'); "
            "print(json.dumps({'AP50': r.metrics['AP50'], 'rows': r.predictions.num_rows, "
            "'predictions': r.run['counts']['predictions'], 'repr': repr(r)}))")
    api = subprocess.run([sys.executable, "-c", code, str(tmp_path / "api")], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert api.returncode == 0, api.stderr
    got = json.loads(api.stdout.strip().splitlines()[-1])
    cli = subprocess.run([sys.executable, "-m", "rayinfer.jobs", "run", "coco", "--output", str(tmp_path / "cli"),
                          "--runtime", "onnxruntime", "--quiet"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert got["AP50"] == json.loads((tmp_path / "cli/metrics.json").read_text())["AP50"]
    assert got["rows"] == got["predictions"] == 48
    assert "metrics: " in got["repr"] and got["repr"].splitlines()[-1] == f"Results saved to {tmp_path / 'api'}"


def test_ray_data_reads_the_predictions_as_they_are(ray_session, coco_det, tmp_path):
    """Item 3: a Ray Data pipeline beside rayinfer reads its predictions without conversion."""
    rd = pytest.importorskip("ray.data", reason="Ray Data is not installed here (pip install -e '.[bench]')")
    root, model = coco_det
    result = rayinfer.run("coco", data_root=str(root), model=str(model), output=str(tmp_path / "r"), shard_size=2,
                          runtime="onnxruntime", report=False)
    dataset = rd.read_parquet(result.output + "/predictions")
    assert dataset.count() == result.predictions.num_rows == 6
    assert set(dataset.schema().names) >= {"sample_id", "image_id", "bbox", "score", "category_id"}

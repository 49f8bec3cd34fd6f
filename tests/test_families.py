"""The detectors people export today (issue 44): end-to-end outputs ([B, N, 6]: YOLO26, YOLOv10,
`nms=True`), RT-DETR as Ultralytics exports it, and RT-DETR / D-FINE / DEIM as their own
repositories do; each a family of one module, checked through the whole job on built graphs
whose outputs are known, and the end-to-end one on the real yolov8n_end2end export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayinfer.datasets.synthetic import write_coco
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.driver import run_job
from tests.conftest import save_graph

SIZE = 64


def const_model(path: Path, outputs: dict[str, np.ndarray], extra_inputs: dict[str, tuple] | None = None,
                metadata: dict[str, str] | None = None) -> Path:
    """An ONNX graph that reads its inputs and returns `outputs` whatever they hold."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])]
    nodes = [helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0)]
    for name, shape in (extra_inputs or {}).items():
        inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, list(shape)))
        nodes += [helper.make_node("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT),
                  helper.make_node("ReduceSum", [f"{name}_f"], [f"{name}_sum"], keepdims=0),
                  helper.make_node("Add", ["total", f"{name}_sum"], ["total2"])]
    last = "total2" if extra_inputs else "total"
    inits = [numpy_helper.from_array(np.float32(0), "zero")]
    nodes.append(helper.make_node("Mul", [last, "zero"], ["nothing"]))
    outs = []
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value, f"{name}_const"))
        if value.dtype == np.float32:
            nodes.append(helper.make_node("Add", [f"{name}_const", "nothing"], [name]))
        else:
            nodes += [helper.make_node("Cast", ["nothing"], [f"{name}_zero"], to=TensorProto.INT64),
                      helper.make_node("Add", [f"{name}_const", f"{name}_zero"], [name])]
        outs.append(helper.make_tensor_value_info(name, types[value.dtype], list(value.shape)))
    save_graph(helper.make_graph(nodes, "const", inputs, outs, inits), path, opset=13)
    if metadata:
        model = onnx.load(path)
        for k, v in metadata.items():
            model.metadata_props.add(key=k, value=v)
        onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def one_image(tmp_path_factory):
    """A one-image COCO set (320x240 image, 3 categories) and its ground truth boxes."""
    root = write_coco(tmp_path_factory.mktemp("coco"), n_images=1, seed=7)
    data = json.loads((root / "annotations/instances_val2017.json").read_text())
    image = data["images"][0]
    cats = sorted(c["id"] for c in data["categories"])
    gt = [(a["bbox"], cats.index(a["category_id"])) for a in data["annotations"] if not a.get("iscrowd")]
    assert gt
    return root, image["width"], image["height"], gt, len(cats)


def _job(root: Path, model: Path, out: Path, **options):
    return run_job(JobConfig(task="coco", data_root=str(root), model=str(model), output=str(out), progress=False,
                             runtime="onnxruntime", options=options))


# -- DETR family ------------------------------------------------------------------------------
def _rtdetr_output(gt, width, height, nc, convention: str) -> np.ndarray:
    out = np.zeros((1, 300, 4 + nc), np.float32)
    for q, ((x, y, w, h), c) in enumerate(gt):
        if convention == "cxcywh":
            out[0, q, :4] = ((x + w / 2) / width, (y + h / 2) / height, w / width, h / height)
        else:  # the wrong one: xyxy, normalised
            out[0, q, :4] = (x / width, y / height, (x + w) / width, (y + h) / height)
        out[0, q, 4 + c] = 0.9
    return out


@pytest.mark.parametrize("convention,ap", [("cxcywh", 1.0), ("xyxy", None)])
def test_rtdetr_as_ultralytics_exports_it(ray_session, one_image, tmp_path, convention, ap):
    """A graph returning the ground truth in RT-DETR's convention (normalised cx, cy, w, h of the
    stretched input) gives AP 1.0 through the job; the same boxes as x1, y1, x2, y2 do not."""
    root, width, height, gt, nc = one_image
    names = {i: f"c{i}" for i in range(nc)}
    model = const_model(tmp_path / "rtdetr.onnx", {"output0": _rtdetr_output(gt, width, height, nc, convention)},
                        metadata={"names": repr(names)})
    outcome = _job(root, model, tmp_path / "out")
    assert outcome.run["model_family"] == {"name": "rtdetr", "nms": "in the model"}
    if ap is not None:
        assert outcome.metrics["AP"] == pytest.approx(ap)
    else:
        assert outcome.metrics["AP"] < 0.5


def _detr_outputs(gt, nc, convention: str, category_ids=None) -> dict[str, np.ndarray]:
    n = 300
    labels, boxes, scores = np.zeros((1, n), np.int64), np.zeros((1, n, 4), np.float32), np.zeros((1, n), np.float32)
    for q, ((x, y, w, h), c) in enumerate(gt):
        boxes[0, q] = (x, y, x + w, y + h) if convention == "xyxy" else (x + w / 2, y + h / 2, w, h)
        labels[0, q] = c if category_ids is None else category_ids[c]
        scores[0, q] = 0.8
    return {"labels": labels, "boxes": boxes, "scores": scores}


@pytest.mark.parametrize("convention,ap", [("xyxy", 1.0), ("cxcywh", None)])
def test_detr_as_its_repositories_export_it(ray_session, one_image, tmp_path, convention, ap):
    """Two inputs (images, orig_target_sizes), three outputs (labels, boxes in image pixels
    x1y1x2y2, scores): the ground truth gives AP 1.0; the same boxes as cx, cy, w, h do not."""
    root, width, height, gt, nc = one_image
    model = const_model(tmp_path / "detr.onnx", _detr_outputs(gt, nc, convention),
                        extra_inputs={"orig_target_sizes": (1, 2)})
    outcome = _job(root, model, tmp_path / "out")
    assert outcome.run["model_family"] == {"name": "detr", "nms": "in the model"}
    if ap is not None:
        assert outcome.metrics["AP"] == pytest.approx(ap)
    else:
        assert outcome.metrics["AP"] < 0.5


def test_detr_labels_as_category_ids_with_the_option(ray_session, one_image, tmp_path):
    root, width, height, gt, nc = one_image
    ids = sorted(c["id"] for c in json.loads((root / "annotations/instances_val2017.json").read_text())["categories"])
    model = const_model(tmp_path / "detr-ids.onnx", _detr_outputs(gt, nc, "xyxy", ids),
                        extra_inputs={"orig_target_sizes": (1, 2)})
    outcome = _job(root, model, tmp_path / "out", category_labels=True)
    assert outcome.metrics["AP"] == pytest.approx(1.0)
    rows = pq.read_table(tmp_path / "out/predictions").column("category_id").to_pylist()[0]
    assert sorted(rows) == sorted(ids[c] for _, c in gt)

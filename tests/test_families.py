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

from rayinfer.actors.families import choose_family
from rayinfer.actors.families.detection import DetectionOptions
from rayinfer.actors.families.end2end import EndToEnd
from rayinfer.actors.model import TensorSpec
from rayinfer.datasets.base import Sample, SetupError
from rayinfer.datasets.images import letterbox
from rayinfer.datasets.synthetic import write_coco
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.driver import run_job
from tests.conftest import need_shared, save_graph

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


# -- end to end ------------------------------------------------------------------------------
def test_end2end_rows_in_any_order_and_padded_with_garbage_give_the_right_detections():
    """Rows are ranked by score whatever the model's order; rows at or below conf are dropped
    (zero padding, or garbage scores); boxes are mapped back from the letterbox and clipped."""
    spec = [TensorSpec("images", (1, 3, 64, 64), np.dtype(np.float32))]
    family = EndToEnd(spec, DetectionOptions(conf_thres=0.25, max_det=2), category_ids=[1, 3, 7])
    raw = np.zeros((48, 64, 3), np.uint8)  # 64 wide, 48 high: letterboxed with 8 px bars above and below
    _, lb = letterbox(raw, (64, 64))
    rows = np.zeros((1, 300, 6), np.float32)
    rows[0, 0] = (10, 18, 30, 28, 0.4, 2)  # not sorted: the best comes second
    rows[0, 1] = (0, 8, 20, 60, 0.9, 0)  # below the image's bottom edge: clipped
    rows[0, 2] = (5, 10, 6, 12, 0.2, 1)  # garbage below conf
    rows[0, 3] = (1, 9, 2, 11, 0.3, 1)  # above conf, but max_det=2 keeps the best two
    record = family.postprocess([rows], lb, Sample("5", "x.jpg", {"image_id": 5}))
    assert record["category_id"].tolist() == [1, 7]
    assert np.allclose(record["score"], [0.9, 0.4])
    assert np.allclose(record["bbox"][0], [0, 0, 20, 48])  # y 8..60 in the input -> 0..52, clipped to 48
    assert np.allclose(record["bbox"][1], [10, 10, 20, 10])


def test_end2end_is_chosen_by_shape_its_metadata_may_refuse_and_the_nms_options_are_not_its_own():
    image = [TensorSpec("images", (1, 3, 640, 640), np.dtype(np.float32))]
    out = [TensorSpec("output0", (1, 300, 6), np.dtype(np.float32))]
    assert choose_family("auto", image, out).name == "end2end"
    assert choose_family("auto", image, out, {"end2end": "True", "names": "{0: 'a', 1: 'b'}"}).name == "end2end"
    assert EndToEnd.num_classes(out, {"names": "{0: 'a', 1: 'b'}"}) == 2 and EndToEnd.num_classes(out) is None
    with pytest.raises(SetupError, match="end2end: its metadata says end2end: False"):
        choose_family("auto", image, out, {"end2end": "False"})
    from rayinfer.actors.families import check_options

    check_options(EndToEnd, {"conf_thres": 0.1, "max_det": 100})
    with pytest.raises(SetupError, match=r"^--iou-thres, --multi-label: not an option of the end2end family \(NMS: "
                                         r"in the model; its options: --conf-thres, --max-det, --reduced-decode\); "
                                         r"yolov8 and yolox take them$"):
        check_options(EndToEnd, {"iou_thres": 0.5, "multi_label": True})


def test_end2end_graph_with_unsorted_rows_and_garbage_padding_gives_ap_1(ray_session, one_image, tmp_path):
    """Through the whole job: a built [1, 300, 6] graph whose rows are the ground truth in
    input pixels, worst first, the padding holding garbage boxes scored at or below conf."""
    root, width, height, gt, nc = one_image
    _, lb = letterbox(np.zeros((height, width, 3), np.uint8), (SIZE, SIZE))
    rows = np.zeros((1, 300, 6), np.float32)
    rng = np.random.default_rng(0)
    rows[0, :, :4] = rng.uniform(0, SIZE, (300, 4))  # garbage boxes ...
    rows[0, :, 4] = rng.uniform(0, 0.001, 300)  # ... scored at most conf (0.001): dropped
    for q, ((x, y, w, h), c) in enumerate(gt):
        x1, y1 = x * lb.gain_x + lb.left, y * lb.gain_y + lb.top
        rows[0, q] = (x1, y1, x1 + w * lb.gain_x, y1 + h * lb.gain_y, 0.5 + 0.1 * q / len(gt), c)  # worst first
    model = const_model(tmp_path / "e2e.onnx", {"output0": rows})
    outcome = _job(root, model, tmp_path / "out")
    assert outcome.run["model_family"]["name"] == "end2end"
    assert outcome.metrics["AP"] == pytest.approx(1.0)
    scores = pq.read_table(tmp_path / "out/predictions").column("score").to_pylist()[0]
    assert len(scores) == len(gt) and scores == sorted(scores, reverse=True)


@pytest.mark.shared
@pytest.mark.parametrize("metadata", [pytest.param(True, marks=pytest.mark.slow), False])
def test_yolov8n_end2end_matches_the_reference(ray_session, tmp_path, metadata):
    """../shared/README.md: AP 0.4063, AP50 0.5542, AP75 0.4409, AR100 0.5770 (+-0.005), with
    and without the model's metadata (the family is recognised by shape alone)."""
    onnx = pytest.importorskip("onnx")
    root = need_shared("data", "coco-val2017-mini")
    model = need_shared("models", "yolov8n_end2end.onnx")
    if not metadata:
        stripped = onnx.load(model)
        assert any(p.key == "end2end" for p in stripped.metadata_props)
        del stripped.metadata_props[:]
        model = tmp_path / "stripped.onnx"
        onnx.save(stripped, model)
    outcome = run_job(JobConfig(task="coco", data_root=str(root), model=str(model), output=str(tmp_path / "o"),
                                progress=False, report=False))
    reference = {"AP": 0.4063, "AP50": 0.5542, "AP75": 0.4409, "AR100": 0.5770}
    for key, value in reference.items():
        assert abs(outcome.metrics[key] - value) <= 0.005, (key, outcome.metrics[key])
    assert outcome.run["model_family"] == {"name": "end2end", "nms": "in the model"}


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

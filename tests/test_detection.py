"""Detection pieces on synthetic data: image reading, letterbox, NMS, decoding, COCO eval."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow as pa
import pytest

from rayinfer.actors.model import TensorSpec
from rayinfer.datasets.base import Sample, SampleError, SetupError, safe_join
from rayinfer.datasets.coco import STAT_NAMES, CocoDataset
from rayinfer.datasets.images import letterbox, read_image, to_blob
from rayinfer.datasets.synthetic import write_coco
from rayinfer.actors.families import choose_family
from rayinfer.actors.families.detection import DetectionOptions, batched_nms
from rayinfer.actors.families.yolov8 import YoloV8
from rayinfer.actors.families.yolox import YoloX


def greedy_nms_reference(xyxy, scores, classes, iou):
    """Textbook class-aware greedy NMS, one box at a time (slow, obviously right)."""
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            if classes[j] != classes[i]:
                rest.append(j)
                continue
            x1, y1 = max(xyxy[i, 0], xyxy[j, 0]), max(xyxy[i, 1], xyxy[j, 1])
            x2, y2 = min(xyxy[i, 2], xyxy[j, 2]), min(xyxy[i, 3], xyxy[j, 3])
            inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
            a = (xyxy[i, 2] - xyxy[i, 0]) * (xyxy[i, 3] - xyxy[i, 1])
            b = (xyxy[j, 2] - xyxy[j, 0]) * (xyxy[j, 3] - xyxy[j, 1])
            if inter / (a + b - inter) <= iou:
                rest.append(j)
        order = rest
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_batched_nms_matches_greedy_reference(seed):
    rng = np.random.default_rng(seed)
    n = 300
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(5, 60, (n, 2))
    xyxy = np.column_stack([xy, xy + wh]).astype(np.float32)
    scores = rng.uniform(0.01, 1, n).astype(np.float32)
    if seed >= 3:  # many equal scores, within and across classes: ties go to the lower index
        scores = np.maximum(np.round(scores * 10) / 10, 0.1)  # (NMS gets only scores over conf_thres > 0)
    classes = rng.integers(0, 4 if seed % 2 else 40, n)
    kept = batched_nms(xyxy, scores, classes, 0.5, max_det=1000)
    assert list(kept) == greedy_nms_reference(xyxy, scores, classes, 0.5)
    assert len(batched_nms(xyxy, scores, classes, 0.5, max_det=7)) == 7


def test_letterbox_centre_pad_and_inverse_mapping():
    image = np.full((48, 64, 3), 200, np.uint8)
    out, lb = letterbox(image, (64, 64))
    assert out.shape == (64, 64, 3)
    assert (lb.left, lb.top) == (0, 8)
    assert (out[:8] == 114).all() and (out[-8:] == 114).all() and (out[8:56] == 200).all()
    model_box = np.array([[10.0, 18.0, 30.0, 28.0]])
    assert np.allclose(lb.to_image(model_box), [[10, 10, 30, 20]])
    # downscale, and boxes past the image are clipped to it
    big, lb2 = letterbox(np.zeros((480, 1280, 3), np.uint8), (320, 320))
    assert big.shape == (320, 320, 3) and lb2.gain_x == pytest.approx(0.25)
    assert np.allclose(lb2.to_image(np.array([[-5.0, 0.0, 400.0, 400.0]])), [[0, 0, 1280, 480]])
    # YOLOX: corner placement
    _, lb3 = letterbox(image, (64, 64), center=False, exact_ratio=True)
    assert (lb3.left, lb3.top) == (0, 0)


@pytest.mark.parametrize("shape", [(640, 640, 3), (37, 53, 3), (21, 18)])
def test_to_blob_matches_opencv_blob_bit_for_bit(shape):
    image = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    for scale, swap in [(1.0 / 255.0, True), (1.0, False), (0.5, True)]:
        ours = to_blob(image, scale, swap_rb=swap)
        theirs = cv2.dnn.blobFromImage(image, scale, swapRB=swap)
        assert ours.dtype == np.float32 and ours.flags.c_contiguous
        assert ours.shape == theirs.shape
        assert np.array_equal(ours, theirs)


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(SampleError, match="missing.jpg: file not found"):
        read_image(tmp_path / "missing.jpg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(SampleError, match="empty.jpg: empty file"):
        read_image(empty)
    good = tmp_path / "good.jpg"
    cv2.imwrite(str(good), np.full((32, 32, 3), 90, np.uint8))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SampleError, match="truncated.jpg: truncated JPEG"):
        read_image(truncated)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(SampleError, match="corrupt.jpg: not a decodable image"):
        read_image(corrupt)


def test_read_image_converts_gray_and_16bit_to_bgr8(tmp_path):
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), np.full((20, 30), 77, np.uint8))
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), np.full((20, 30, 3), 65535, np.uint16))
    for path in (gray, deep):
        image = read_image(path)
        assert image.shape == (20, 30, 3) and image.dtype == np.uint8


def _photo(h: int, w: int) -> np.ndarray:
    """Smooth BGR content (JPEG-friendly) with a bright square at a known place."""
    ys, xs = np.mgrid[0:h, 0:w]
    image = np.stack([xs * 255 // w, ys * 255 // h, (xs + ys) * 255 // (w + h)], -1).astype(np.uint8)
    image[h // 4:h // 2, w // 4:w // 2] = 250
    return image


def test_reduced_scale_decode_only_for_large_jpegs_with_a_known_size(tmp_path):
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), _photo(960, 1280), [cv2.IMWRITE_JPEG_QUALITY, 95])
    full = read_image(path, (960, 1280))
    assert full.shape == (960, 1280, 3)
    # 1280 wide is twice a 640 input: decoded at 1/2 (the width limits the letterbox)
    half = read_image(path, (960, 1280), draft=(640, 640))
    assert half.shape == (480, 640, 3)
    assert np.abs(half.astype(int) - cv2.resize(full, (640, 480), interpolation=cv2.INTER_AREA)).mean() < 2
    assert read_image(path, (960, 1280), draft=(320, 320)).shape == (240, 320, 3)  # 1/4
    assert read_image(path, (960, 1280), draft=(100, 1000)).shape == (120, 160, 3)  # 1/8: the height limits
    # not twice the input: the full image (libjpeg's 5/8 etc. would decode slower than whole)
    assert read_image(path, (960, 1280), draft=(700, 700)).shape == (960, 1280, 3)
    # without the annotations' size nothing could map boxes back: full; a size the file
    # contradicts is named as before
    assert read_image(path, None, draft=(320, 320)).shape == (960, 1280, 3)
    with pytest.raises(SampleError, match="image is 1280x960 but the annotations say 1280x900"):
        read_image(path, (900, 1280), draft=(320, 320))
    # a PNG is decoded whole
    png = tmp_path / "big.png"
    cv2.imwrite(str(png), _photo(960, 1280))
    assert read_image(png, (960, 1280), draft=(320, 320)).shape == (960, 1280, 3)


def test_reduced_scale_decode_maps_boxes_back_to_the_original_image(tmp_path):
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), _photo(960, 1280), [cv2.IMWRITE_JPEG_QUALITY, 95])
    options = DetectionOptions(reduced_decode=True)
    for kind, spec in ((YoloV8, (1, 3, 320, 320)), (YoloX, (1, 3, 320, 320))):
        family = kind([_spec(spec)], options, [1])
        assert family.draft == (320, 320) and kind([_spec(spec)], DetectionOptions(), [1]).draft is None
        sample = Sample("1", "big.jpg", {"image_id": 1, "height": 960, "width": 1280})
        raw = read_image(path, (960, 1280), draft=family.draft)
        feed, lb = family.preprocess(raw, sample)
        _, full_lb = family.preprocess(read_image(path, (960, 1280)), sample)
        assert raw.shape == (240, 320, 3) and next(iter(feed.values())).shape == spec
        assert (lb.height, lb.width) == (960, 1280) and lb == full_lb
        # the bright square, found in model pixels, lands where it is in the original
        x1, y1 = lb.left + 1280 // 4 * lb.gain_x, lb.top + 960 // 4 * lb.gain_y
        box = np.array([[x1, y1, x1 + 320 * lb.gain_x, y1 + 240 * lb.gain_y]])
        assert np.allclose(lb.to_image(box), [[320, 240, 640, 480]])


def test_safe_join_refuses_escapes(tmp_path):
    assert safe_join(tmp_path, "val2017/a.jpg") == tmp_path / "val2017/a.jpg"
    (tmp_path / "link.jpg").symlink_to("/elsewhere/a.jpg")  # a link inside the root is the owner's choice
    assert safe_join(tmp_path, "link.jpg") == tmp_path / "link.jpg"
    with pytest.raises(SampleError, match="escapes the data root"):
        safe_join(tmp_path, "val2017/../../x.jpg")
    with pytest.raises(SampleError, match="escapes the data root"):
        safe_join(tmp_path, "../../etc/passwd")
    with pytest.raises(SampleError, match="escapes the data root"):
        safe_join(tmp_path, "/etc/passwd")


def _spec(shape):
    return TensorSpec("images", shape, np.dtype(np.float32))


def _out(*shape):
    return [TensorSpec("o", shape, np.dtype(np.float32))]


def test_a_family_is_chosen_by_its_signature_and_refused_rather_than_guessed():
    image640, image416 = [_spec((1, 3, 640, 640))], [_spec((1, 3, 416, 416))]
    assert choose_family("auto", image640, _out(1, 84, 8400)) is YoloV8
    assert choose_family("auto", image416, _out(1, 3549, 85)) is YoloX
    assert YoloV8.num_classes(_out(1, 84, 8400)) == 80 and YoloX.num_classes(_out(1, 3549, 85)) == 80
    # NMS-free detectors (YOLOv10 / YOLO26 end to end: [1, 300, 6]; Ultralytics RT-DETR: [1, 300, 4+nc]) are
    # neither YOLOv8 nor YOLOX, each saying why, and are their own families
    for shape, family in (((1, 300, 6), "end2end"), ((1, 300, 84), "rtdetr")):
        for other in ("yolov8", "yolox"):
            with pytest.raises(SetupError, match=rf"not a {other} detector: .*(not \[1, 4\+nc, N\]|300 anchors, not the 8400 cells)"):
                choose_family(other, image640, _out(*shape))
        assert choose_family("auto", image640, _out(*shape)).name == family
    with pytest.raises(SetupError, match="not a yolox detector: .*3549 anchors, not the 8400 cells"):
        choose_family("yolox", image640, _out(1, 3549, 85))
    with pytest.raises(SetupError, match="not a yolov8 detector"):
        choose_family("yolov8", image416, _out(1, 3549, 85))
    with pytest.raises(SetupError, match="expects one 3-D output"):
        choose_family("yolov8", image640, _out(1, 10))
    with pytest.raises(SetupError, match=r"could be any of \['yolov8', 'yolox'\].*set --model-family"):
        choose_family("auto", image640, _out(1, None, 85))  # dynamic anchors: either layout
    with pytest.raises(SetupError, match="unknown model family 'detr3'"):
        choose_family("detr3", image640, _out(1, 300, 6))
    with pytest.raises(SetupError, match="not an image tensor"):
        YoloV8([_spec((1, 80))], DetectionOptions(), [1])


def test_yolov8_decoding_multi_label_nms_and_mapping():
    family = YoloV8([_spec((1, 3, 64, 64))], DetectionOptions(), category_ids=[1, 3, 7])
    pred = np.zeros((4 + 3, 8), np.float32)
    pred[:4, 0] = (32, 32, 20, 10)  # best box, class 0 (0.9) and class 2 (0.5): multi-label keeps both
    pred[4, 0], pred[6, 0] = 0.9, 0.5
    pred[:4, 1] = (33, 32, 20, 10)  # overlaps box 0 in class 0: suppressed
    pred[4, 1] = 0.8
    pred[:4, 2] = (10, 10, 4, 4)  # below the threshold
    pred[5, 2] = 0.0005
    _, lb = letterbox(np.zeros((48, 64, 3), np.uint8), (64, 64))
    record = family.postprocess([pred[None]], lb, Sample("5", "x.jpg", {"image_id": 5}))
    assert record["category_id"].tolist() == [1, 7]
    assert np.allclose(record["score"], [0.9, 0.5])
    assert np.allclose(record["bbox"][0], [22, 19, 20, 10])  # xywh in the 64x48 image
    single = YoloV8([_spec((1, 3, 64, 64))], DetectionOptions(multi_label=False), [1, 3, 7])
    assert single.postprocess([pred[None]], lb, Sample("5", "x.jpg", {"image_id": 5}))["category_id"].tolist() == [1]


def test_yolox_grid_decode():
    family = YoloX([_spec((1, 3, 64, 64))], DetectionOptions(), category_ids=[1, 3])
    n = (8 * 8) + (4 * 4) + (2 * 2)
    pred = np.zeros((n, 5 + 2), np.float32)
    cell = 2 * 8 + 3  # stride-8 grid: row 2, column 3
    pred[cell, :4] = (0.5, 0.5, np.log(2.0), np.log(1.0))
    pred[cell, 4], pred[cell, 6] = 0.8, 0.9
    xyxy, scores, classes = family.select(pred)
    assert classes.tolist() == [1]
    assert scores[0] == pytest.approx(0.72)
    assert np.allclose(xyxy[0], [28 - 8, 20 - 4, 28 + 8, 20 + 4])


def test_coco_reader_and_eval_on_synthetic_set(tmp_path):
    root = write_coco(tmp_path / "coco", n_images=6, seed=1)
    ds = CocoDataset(root)
    samples = ds.samples()
    assert len(samples) == 6 and samples[0].file.startswith("val2017/")
    assert ds.load(samples[0]).shape == (240, 320, 3)
    assert ds.category_ids == [1, 3, 7]
    gt = json.loads((root / "annotations/instances_val2017.json").read_text())["annotations"]
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in gt]
    metrics = ds.evaluate(perfect)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert set(STAT_NAMES) <= metrics.keys() and set(metrics["per_class_AP"]) == {"square", "disc", "triangle"}
    # an image with no predictions counts as a miss when it is in the evaluated set
    half = [p for p in perfect if p["image_id"] != samples[0].info["image_id"]]
    assert ds.evaluate(half, [s.sample_id for s in samples])["AR100"] < 1.0
    table = pa.Table.from_pylist([], schema=pa.schema([("image_id", pa.int64()), ("bbox", pa.list_(pa.list_(pa.float32(), 4))),
                                                        ("score", pa.list_(pa.float32())), ("category_id", pa.list_(pa.int32()))]))
    assert ds.evaluate(table, ["1000"])["AP"] == 0.0


def test_coco_setup_errors(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/instances_val2017.json").write_text("not json{")
    with pytest.raises(SetupError, match="not a JSON file"):
        CocoDataset(tmp_path).samples()
    with pytest.raises(SetupError, match="annotation file not found"):
        CocoDataset(tmp_path / "nowhere").samples()
    root = write_coco(tmp_path / "c2", n_images=2)
    with pytest.raises(SetupError, match="image ids not in"):
        CocoDataset(root, image_ids=[42]).samples()
    assert [s.sample_id for s in CocoDataset(root, image_ids=[1001]).samples()] == ["1001"]
    assert len(CocoDataset(root, limit=1).samples()) == 1


@pytest.mark.parametrize(("text", "expected"), [
    ('{"images": [], "categories": []}', "needs images, annotations, categories"),
    ('[1, 2]', "needs images, annotations, categories"),
    ('{"images": [], "categories": [], "annotations": 7}', "'annotations' is not a list"),
    ('{"images": [], "categories": [], "annotations": [3]}', r"annotations\[0\]: not an object"),
    ('{"images": [], "categories": [], "annotations": [{"id": 1}', "not a JSON file"),
])
def test_annotation_files_read_as_a_stream_refuse_what_is_not_coco(tmp_path, text, expected):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/instances_val2017.json").write_text(text)
    with pytest.raises(SetupError, match=expected):
        CocoDataset(tmp_path).coco


def test_an_annotation_file_without_objects_is_valid(tmp_path):
    root = write_coco(tmp_path / "c", n_images=2)
    path = root / "annotations/instances_val2017.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(dict(data, annotations=[])))
    coco = CocoDataset(root).coco
    assert len(coco) == 0 and len(coco.getImgIds()) == 2 and coco.getAnnIds(imgIds=coco.getImgIds()) == []


def test_the_decode_benchs_upscaled_copy_is_the_same_set_larger(tmp_path):
    """The decode bench's stand-in for high-resolution sources: every image `factor` times
    larger, its annotations scaled, so perfect boxes still score AP 1 and the reduced-scale
    decode applies to each image twice the input."""
    from benchmarks.decode import reduced_images, upscale_coco

    root = write_coco(tmp_path / "coco", n_images=4, seed=2)
    big = upscale_coco(root, 2, tmp_path / "big")
    ds = CocoDataset(big)
    assert ds.load(ds.samples()[0]).shape == (480, 640, 3)
    assert reduced_images(root, (128, 128)) == (4, 4) and reduced_images(root, (200, 200)) == (0, 4)
    assert reduced_images(big, (200, 200)) == (4, 4)
    gt = json.loads((big / "annotations/instances_val2017.json").read_text())["annotations"]
    small = json.loads((root / "annotations/instances_val2017.json").read_text())["annotations"]
    assert [a["bbox"] for a in gt] == [[2 * v for v in a["bbox"]] for a in small]
    assert [a["area"] for a in gt] == [4 * a["area"] for a in small]
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9} for a in gt]
    assert ds.evaluate(perfect)["AP"] == pytest.approx(1.0)

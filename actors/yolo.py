"""Detection adapters: YOLOv8/YOLO11 (Ultralytics export) and YOLOX, on the COCO dataset.

Decoding follows Ultralytics' `val` protocol: candidates above `conf_thres`
(multi-label: every class score above it), class-aware NMS at `iou_thres`, at most
`max_det` boxes, boxes mapped back to the image and clipped. All vectorised numpy;
NMS itself is OpenCV's C++ `NMSBoxes` over class-offset boxes (the same trick as
Ultralytics' `max_wh` offset), so there is no per-box Python loop.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from rayinfer.actors.model import TensorSpec
from rayinfer.datasets.base import Sample, SetupError
from rayinfer.datasets.images import Letterbox, letterbox, to_blob

FAMILIES = ("yolov8", "yolox")


@dataclass(frozen=True)
class DetectionOptions:
    """Decoding thresholds. `multi_label=None` takes the family's default
    (YOLOv8: multi-label as Ultralytics val; YOLOX: single label, score = obj x cls)."""

    conf_thres: float = 0.001
    iou_thres: float = 0.7
    max_det: int = 300
    multi_label: bool | None = None
    max_nms: int = 30000
    max_wh: float = 7680.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf_thres < 1.0:
            raise ValueError(f"conf_thres must be in [0, 1), got {self.conf_thres}")
        if not 0.0 < self.iou_thres <= 1.0:
            raise ValueError(f"iou_thres must be in (0, 1], got {self.iou_thres}")
        if self.max_det < 1:
            raise ValueError(f"max_det must be >= 1, got {self.max_det}")


DETECTION_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("bbox", pa.list_(pa.list_(pa.float32(), 4))),  # COCO xywh, image pixels
        pa.field("score", pa.list_(pa.float32())),
        pa.field("category_id", pa.list_(pa.int32())),
    ]
)


def xywh2xyxy(b: np.ndarray) -> np.ndarray:
    out = np.empty_like(b)
    half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
    out[:, 0], out[:, 1] = b[:, 0] - half_w, b[:, 1] - half_h
    out[:, 2], out[:, 3] = b[:, 0] + half_w, b[:, 1] + half_h
    return out


def batched_nms(xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_thres: float,
                max_det: int, max_wh: float = 7680.0) -> np.ndarray:
    """Indices kept by class-aware greedy NMS, best score first, at most `max_det`."""
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    shifted = xyxy.astype(np.float64) + (classes.astype(np.float64) * max_wh)[:, None]
    rects = np.column_stack([shifted[:, :2], shifted[:, 2:] - shifted[:, :2]])
    keep = cv2.dnn.NMSBoxes(rects, scores.astype(np.float32), 0.0, float(iou_thres))
    return np.asarray(keep, np.int64).reshape(-1)[:max_det]


def detect_family(outputs: Sequence[TensorSpec]) -> str:
    """'yolov8' for [1, 4+nc, N] (N anchors last), 'yolox' for [1, N, 5+nc]."""
    if len(outputs) != 1 or len(outputs[0].shape) != 3:
        raise SetupError(
            f"cannot tell the detection family from outputs {[o.describe() for o in outputs]}: "
            "expected one [1, 4+nc, N] (YOLOv8) or [1, N, 5+nc] (YOLOX) tensor; set --model-family"
        )
    _, a, b = outputs[0].shape
    if a is not None and b is not None:
        return "yolov8" if a < b else "yolox"
    return "yolov8" if b is None else "yolox"


def image_input_size(inputs: Sequence[TensorSpec]) -> tuple[int, int]:
    """(H, W) of a single NCHW 3-channel image input with static spatial dims."""
    if len(inputs) != 1:
        raise SetupError(f"expected one image input, the model has {len(inputs)}: {[i.name for i in inputs]}")
    spec = inputs[0]
    if len(spec.shape) != 4 or spec.shape[1] not in (3, None) or None in spec.shape[2:]:
        raise SetupError(
            f"model input '{spec.name}' is {spec.describe()}, not an image tensor [N, 3, H, W] with fixed H, W"
        )
    return int(spec.shape[2]), int(spec.shape[3])  # type: ignore[arg-type]


def class_names(metadata: dict[str, str]) -> dict[int, str]:
    """Class names from Ultralytics ONNX metadata (a dict literal; parsed, never eval'd)."""
    raw = metadata.get("names")
    if not raw:
        return {}
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return {}
    return {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}


class YoloAdapter:
    """Letterbox in, boxes out. One class for both families; they differ in
    preprocessing (RGB/255 centre pad vs BGR/0-255 corner pad) and in decoding."""

    schema = DETECTION_SCHEMA

    def __init__(self, family: str, inputs: Sequence[TensorSpec], options: DetectionOptions,
                 category_ids: Sequence[int]) -> None:
        if family not in FAMILIES:
            raise SetupError(f"unknown model family {family!r}; expected one of {FAMILIES}")
        self.family = family
        self.size = image_input_size(inputs)
        self.input_name = inputs[0].name
        self.options = options
        self.multi_label = options.multi_label if options.multi_label is not None else family == "yolov8"
        self.category_ids = np.asarray(category_ids, np.int32)
        if family == "yolox":
            self._grid, self._strides = _yolox_grid(self.size)

    def preprocess(self, raw: np.ndarray, sample: Sample) -> tuple[dict[str, np.ndarray], Letterbox]:
        if self.family == "yolov8":
            image, lb = letterbox(raw, self.size, center=True)
            blob = to_blob(image, 1.0 / 255.0, swap_rb=True)
        else:
            image, lb = letterbox(raw, self.size, center=False, exact_ratio=True)
            blob = to_blob(image)
        return {self.input_name: blob}, lb

    def postprocess(self, outputs: Sequence[np.ndarray], lb: Letterbox, sample: Sample) -> dict[str, Any]:
        xyxy, scores, classes = self.decode(outputs[0][0])
        xyxy = lb.to_image(xyxy)
        nc = len(self.category_ids)
        if len(classes) and classes.max() >= nc:
            raise ValueError(f"model predicts class {classes.max()} but the dataset has {nc} categories")
        bbox = np.column_stack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]]).astype(np.float32)
        return {
            "image_id": int(sample.info["image_id"]),
            "height": lb.height,
            "width": lb.width,
            "bbox": list(bbox),
            "score": scores.astype(np.float32),
            "category_id": self.category_ids[classes],
        }

    def decode(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw output for one image -> (xyxy in model pixels, scores, class indices)."""
        o = self.options
        if self.family == "yolov8":
            # Anchors whose best class clears the threshold first (Ultralytics' `xc`): the
            # full [N, nc] score matrix is never built for the rest.
            keep = np.flatnonzero(pred[4:].max(axis=0) > o.conf_thres)
            boxes, cls_scores = pred[:4, keep].T, pred[4:, keep].T  # [n, 4], [n, nc]
        else:
            boxes = np.empty((pred.shape[0], 4), np.float32)
            boxes[:, :2] = (pred[:, :2] + self._grid) * self._strides
            boxes[:, 2:] = np.exp(pred[:, 2:4]) * self._strides
            cls_scores = pred[:, 5:] * pred[:, 4:5]
        if self.family == "yolox":
            keep = np.flatnonzero(cls_scores.max(axis=1) > o.conf_thres)
            boxes, cls_scores = boxes[keep], cls_scores[keep]
        if self.multi_label:
            rows, cols = np.nonzero(cls_scores > o.conf_thres)
            scores = cls_scores[rows, cols]
        else:
            cols = cls_scores.argmax(1)
            scores = cls_scores[np.arange(len(cols)), cols]
            rows = np.nonzero(scores > o.conf_thres)[0]
            cols, scores = cols[rows], scores[rows]
        if len(scores) > o.max_nms:
            top = np.argsort(-scores, kind="stable")[: o.max_nms]
            rows, cols, scores = rows[top], cols[top], scores[top]
        xyxy = xywh2xyxy(boxes[rows])
        keep = batched_nms(xyxy, scores, cols, o.iou_thres, o.max_det, o.max_wh)
        return xyxy[keep], scores[keep], cols[keep]


def _yolox_grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    grids, strides = [], []
    for stride in (8, 16, 32):
        h, w = size[0] // stride, size[1] // stride
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        grids.append(np.stack([xs, ys], -1).reshape(-1, 2))
        strides.append(np.full((h * w, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)

"""What every detection family shares: the options, the rows' schema, NMS, and the
template (`DetectionFamily`) whose hooks a family module fills.

A family's one decoding hook is `decode`: the model's outputs for one image and the
geometry of its preprocessing in, (boxes x1 y1 x2 y2 in image pixels, scores, class
indices) out. Families whose model leaves duplicates to the host (YOLOv8 / YOLO11, YOLOX)
subclass `NmsFamily`, which follows Ultralytics' `val` protocol: candidates above
`conf_thres` (multi-label: every class score above it), class-aware NMS at `iou_thres`, at
most `max_det` boxes, mapped back to the image and clipped. All vectorised numpy; NMS
itself is OpenCV's C++ `NMSBoxes`, one pass per class. End-to-end and DETR-family models
have no NMS to do (end2end.py, rtdetr.py, detr.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from rayinfer.actors.model import TensorSpec
from rayinfer.datasets.base import Sample, SetupError
from rayinfer.datasets.images import Letterbox, letterbox, to_blob

@dataclass(frozen=True)
class DetectionOptions:
    """Decoding thresholds, and the opt-in reduced-scale JPEG decode. `multi_label=None` takes
    the family's default (YOLOv8: multi-label as Ultralytics val; YOLOX: single label, score =
    obj x cls)."""

    # metadata["help"]: the command line's help for the field (jobs/options.py builds the flags)
    conf_thres: float = field(default=0.001, metadata={"help": "detection confidence threshold"})
    iou_thres: float = field(default=0.7, metadata={"help": "class-aware NMS IoU threshold"})
    max_det: int = field(default=300, metadata={"help": "detections kept per image"})
    multi_label: bool | None = field(default=None, metadata={
        "help": "every class above the threshold is a candidate (default: by family)"})
    max_nms: int = field(default=30000, metadata={"help": "candidates kept (best scores) before NMS"})
    max_wh: float = field(default=7680.0, metadata={"help": "class offset for class-aware NMS (pixels)"})
    category_labels: bool | None = field(default=None, metadata={
        "help": "(detr) the model's labels are the dataset's category ids (RT-DETR's COCO exports with "
                "remap_mscoco_category), not class indices 0..nc-1"})
    reduced_decode: bool = field(default=False, metadata={
        "help": "decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling) when it is at least twice the "
                "model input: less host CPU per image, AP moves slightly (README: Performance); off keeps "
                "Ultralytics' protocol"})

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
    """Indices kept by class-aware greedy NMS, best score first (ties: lower index first),
    at most `max_det`.

    One greedy pass per class present. The same boxes survive as in Ultralytics' single pass
    over all boxes shifted apart by `max_wh` per class (boxes of different classes never
    overlap there), but each box is compared only with its own class's kept boxes: 1.18
    instead of 2.24 ms for the 1624 candidates of a real YOLOv8n output, identical kept
    indices on 60 COCO images (tests/test_detection.py checks it against textbook greedy
    NMS, ties included). `max_wh` stays for the option's meaning; the result needs no offset.
    """
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    xyxy = xyxy.astype(np.float64)
    scores = scores.astype(np.float32)
    rects = np.column_stack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]])
    by_class = np.argsort(classes, kind="stable")  # each class's indices ascending
    starts = np.flatnonzero(np.diff(classes[by_class])) + 1
    kept = []
    for members in np.split(by_class, starts):
        if len(members) == 1:
            kept.append(members)
            continue
        keep = cv2.dnn.NMSBoxes(rects[members], scores[members], 0.0, float(iou_thres))
        kept.append(members[np.asarray(keep, np.int64).reshape(-1)])
    merged = np.concatenate(kept)
    # NMSBoxes orders by score with a stable sort: merge the classes the same way
    return merged[np.lexsort((merged, -scores[merged]))][:max_det]


def image_input(inputs: Sequence[TensorSpec]) -> TensorSpec:
    """The model's one NCHW 3-channel image input with static spatial dims (other inputs may
    stand beside it: a DETR export's `orig_target_sizes`)."""
    images = [i for i in inputs if len(i.shape) == 4]
    if len(images) != 1:
        raise SetupError(f"model inputs {[f'{i.name} {i.describe()}' for i in inputs]}: not an image tensor "
                         "[N, 3, H, W] with fixed H, W (expected exactly one)")
    spec = images[0]
    if spec.shape[1] not in (3, None) or None in spec.shape[2:]:
        raise SetupError(
            f"model input '{spec.name}' is {spec.describe()}, not an image tensor [N, 3, H, W] with fixed H, W"
        )
    return spec


def image_input_size(inputs: Sequence[TensorSpec]) -> tuple[int, int]:
    """(H, W) of the model's image input (`image_input`)."""
    spec = image_input(inputs)
    return int(spec.shape[2]), int(spec.shape[3])  # type: ignore[arg-type]


class DetectionFamily:
    """The template. A family module subclasses it and fills the hooks `matches`,
    `num_classes`, `preprocess` and `decode`; the row and the class mapping are common.

    Args:
        inputs: the model's inputs (one [N, 3, H, W] image tensor with fixed H, W, unless the
            family says otherwise).
        options: decoding thresholds (the COCO task's options).
        category_ids: the dataset's category id of each class index the model predicts.
        metadata: the model file's metadata (Ultralytics: `names`, `end2end`, ...).
        outputs: the model's outputs (a family with several finds each one's role in them).
    """

    #: the name on the command line (`--model-family NAME`) and in run.json
    name = ""
    schema = DETECTION_SCHEMA
    #: the `DetectionOptions` this family reads; one it does not read, set by the user, is refused
    options_used: tuple[str, ...] = ("conf_thres", "max_det", "reduced_decode")
    #: where duplicate boxes are removed, as the summary and the report say it
    nms = "in the model"

    def __init__(self, inputs: Sequence[TensorSpec], options: DetectionOptions, category_ids: Sequence[int],
                 metadata: Mapping[str, str] | None = None, outputs: Sequence[TensorSpec] = ()) -> None:
        self.size = image_input_size(inputs)
        self.outputs = tuple(outputs)
        self.input_name = image_input(inputs).name
        self.options = options
        self.metadata = dict(metadata or {})
        self.category_ids = np.asarray(category_ids, np.int32)
        #: the reader may decode a large JPEG down to the input size (ModelFamily.draft)
        self.draft = self.size if options.reduced_decode else None

    # -- hooks ------------------------------------------------------------------------------
    @classmethod
    def matches(cls, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                metadata: Mapping[str, str] | None = None) -> str | None:
        """None when the model has this family's signature, else why it does not (one phrase)."""
        raise NotImplementedError

    @classmethod
    def num_classes(cls, outputs: Sequence[TensorSpec], metadata: Mapping[str, str] | None = None) -> int | None:
        """Classes the model predicts, from its output shape or metadata (None if unknown)."""
        raise NotImplementedError

    def preprocess(self, raw: np.ndarray, sample: Sample) -> tuple[dict[str, np.ndarray], Letterbox]:
        """An HxWx3 BGR image -> the model's feed, and the geometry to map boxes back."""
        raise NotImplementedError

    def decode(self, outputs: Sequence[np.ndarray], geometry: Letterbox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The model's outputs for one image (batch axis kept) -> (xyxy [n, 4] in image pixels,
        clipped; scores [n]; class indices [n]), best first, at most `max_det`."""
        raise NotImplementedError

    # -- common -----------------------------------------------------------------------------
    @classmethod
    def unused_options(cls, given: Mapping[str, Any]) -> list[str]:
        """The options in `given` (those the user set) that this family does not read."""
        return sorted(k for k in given if k in {f.name for f in fields(DetectionOptions)} and k not in cls.options_used)

    def describe(self) -> dict[str, Any]:
        """run.json's `model_family`: its name and where NMS happens."""
        return {"name": self.name, "nms": self.nms}

    def ultralytics_letterbox(self, raw: np.ndarray, sample: Sample) -> tuple[dict[str, np.ndarray], Letterbox]:
        """Ultralytics' preprocessing (YOLOv8 / YOLO11 and their end-to-end exports): letterboxed to
        the centre with grey 114, RGB / 255."""
        image, lb = letterbox(raw, self.size, center=True, source=self.source_size(raw, sample))
        return {self.input_name: to_blob(image, 1.0 / 255.0, swap_rb=True)}, lb

    @staticmethod
    def source_size(raw: np.ndarray, sample: Sample) -> tuple[int, int]:
        """The image's own (h, w) to map boxes back to: the annotations' size, which a
        reduced-scale decode (`draft`) keeps and a full decode equals (the reader checks it),
        else the decoded pixels'."""
        info = sample.info
        return (info["height"], info["width"]) if "height" in info and "width" in info else raw.shape[:2]

    def postprocess(self, outputs: Sequence[np.ndarray], lb: Letterbox, sample: Sample) -> dict[str, Any]:
        xyxy, scores, classes = self.decode(outputs, lb)
        nc = len(self.category_ids)
        if len(classes) and (classes.max() >= nc or classes.min() < 0):
            raise ValueError(f"model predicts class {classes.max() if classes.max() >= nc else classes.min()} but "
                             f"the dataset has {nc} categories")
        bbox = np.column_stack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]]).astype(np.float32)
        return {
            "image_id": int(sample.info["image_id"]),
            "height": lb.height,
            "width": lb.width,
            "bbox": list(bbox),
            "score": scores.astype(np.float32),
            "category_id": self.category_ids[classes],
        }


class NmsFamily(DetectionFamily):
    """A family whose model leaves NMS to the host: its hook is `candidates` (one image's raw
    output -> boxes and class scores); selection, NMS and the mapping back are here."""

    options_used = ("conf_thres", "iou_thres", "max_det", "multi_label", "max_nms", "max_wh", "reduced_decode")
    #: multi-label decoding unless `DetectionOptions.multi_label` says otherwise
    multi_label = True

    def __init__(self, inputs: Sequence[TensorSpec], options: DetectionOptions, category_ids: Sequence[int],
                 metadata: Mapping[str, str] | None = None, outputs: Sequence[TensorSpec] = ()) -> None:
        super().__init__(inputs, options, category_ids, metadata, outputs)
        if options.multi_label is not None:
            self.multi_label = options.multi_label
        self.nms = f"class-aware at IoU {options.iou_thres:g}{', multi-label' if self.multi_label else ''}"

    def candidates(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One image's raw output -> (boxes [n, 4] cx, cy, w, h in model pixels, class scores
        [n, nc]) for the n anchors whose best class score clears `conf_thres`."""
        raise NotImplementedError

    def decode(self, outputs: Sequence[np.ndarray], geometry: Letterbox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xyxy, scores, classes = self.select(outputs[0][0])
        return geometry.to_image(xyxy), scores, classes

    def select(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw output for one image -> (xyxy in model pixels, scores, class indices) after
        the thresholds and class-aware NMS."""
        o = self.options
        boxes, cls_scores = self.candidates(pred)
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


def best_first(scores: np.ndarray, conf_thres: float, max_det: int) -> np.ndarray:
    """Indices of the scores above `conf_thres`, best first (ties: lower index first), at most
    `max_det`: what an end-to-end model's rows are, whatever order and padding it returns."""
    above = np.flatnonzero(scores > conf_thres)
    return above[np.argsort(-scores[above], kind="stable")][:max_det]


def names_count(metadata: Mapping[str, str] | None) -> int | None:
    """The number of classes in an Ultralytics export's `names` metadata ({0: 'person', ...}),
    or None where it has none (read with ast.literal_eval: never evaluated as code)."""
    import ast

    text = (metadata or {}).get("names")
    if not text:
        return None
    try:
        names = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return len(names) if isinstance(names, (dict, list)) else None


def one_3d_output(outputs: Sequence[TensorSpec]) -> str | None:
    """None for one [1, a, b] output with a or b known, else why not (the families' first
    check: with both dynamic, no signature tells the layouts apart)."""
    if len(outputs) != 1 or len(outputs[0].shape) != 3:
        return f"expects one 3-D output, the model has {[o.describe() for o in outputs]}"
    if outputs[0].shape[1] is None and outputs[0].shape[2] is None:
        return f"output {outputs[0].describe()} is all dynamic: set --model-family"
    return None

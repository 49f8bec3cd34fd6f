"""RT-DETR as Ultralytics exports it: one output [B, N, 4+nc] for N queries = boxes as
normalised cx, cy, w, h (0..1 of the input), then class scores already through a sigmoid;
input RGB / 255, the image stretched to the input size (Ultralytics' RT-DETR validator
resizes without letterbox: scaleFill).

Decoding takes each query's best class (as Ultralytics' `RTDETRValidator`), keeps scores
above `conf_thres`, best first, at most `max_det`, and maps the boxes back through the
stretch. No NMS: the queries do not duplicate each other. Recognised by its shape: more
queries than channels, and a query count that is not YOLOX's grid; the class count comes
from the channels, or the model's `names` metadata where it has one (which then must agree).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from rayinfer.actors.families.detection import DetectionFamily, best_first, image_input_size, names_count, one_3d_output
from rayinfer.actors.families.yolox import grid_cells
from rayinfer.actors.model import TensorSpec
from rayinfer.datasets.base import Sample, SetupError
from rayinfer.datasets.images import Letterbox, to_blob


def stretch(raw: np.ndarray, size: tuple[int, int], source: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """`raw` resized to `size` (h, w) without keeping its aspect ratio (bilinear), and the
    geometry that maps boxes back to an image of `source` (h, w)."""
    image = cv2.resize(raw, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) if raw.shape[:2] != size else raw
    return image, Letterbox(size[1] / source[1], size[0] / source[0], 0, 0, source[0], source[1])


class RtDetr(DetectionFamily):
    name = "rtdetr"

    @classmethod
    def matches(cls, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                metadata: Mapping[str, str] | None = None) -> str | None:
        wrong = one_3d_output(outputs)
        if wrong:
            return wrong
        _, queries, channels = outputs[0].shape
        if channels is None or channels < 5 or queries is None or queries <= channels:
            return f"output {outputs[0].describe()} is not [B, N, 4+nc] with N queries > 4+nc"
        if str((metadata or {}).get("end2end", "")).lower() == "true":
            return "its metadata says end2end: True (rows of x1, y1, x2, y2, score, class)"
        named = names_count(metadata)
        if named is not None and named + 4 != channels:
            return f"output {outputs[0].describe()} is not 4 box + the {named} classes of its metadata's names"
        if named is None and channels == 6:
            return f"output {outputs[0].describe()} is an end-to-end detector's shape (x1, y1, x2, y2, score, class)"
        try:
            if queries == grid_cells(image_input_size(inputs)):
                return f"output {outputs[0].describe()} has as many rows as YOLOX's grid for its input"
        except SetupError as exc:
            return str(exc)
        return None

    @classmethod
    def num_classes(cls, outputs: Sequence[TensorSpec], metadata: Mapping[str, str] | None = None) -> int | None:
        channels = outputs[0].shape[2]
        return channels - 4 if channels is not None else None

    def preprocess(self, raw: np.ndarray, sample: Sample) -> tuple[dict[str, np.ndarray], Letterbox]:
        image, geometry = stretch(raw, self.size, self.source_size(raw, sample))
        return {self.input_name: to_blob(image, 1.0 / 255.0, swap_rb=True)}, geometry

    def decode(self, outputs: Sequence[np.ndarray], geometry: Letterbox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pred = np.asarray(outputs[0][0], np.float32)
        classes = pred[:, 4:].argmax(1)
        scores = pred[np.arange(len(pred)), 4 + classes]
        keep = best_first(scores, self.options.conf_thres, self.options.max_det)
        cx, cy, w, h = (pred[keep, i] for i in range(4))
        height, width = self.size
        xyxy = np.column_stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
        return geometry.to_image(xyxy), scores[keep], classes[keep]

"""YOLOv8 / YOLO11 (Ultralytics ONNX export): output [1, 4+nc, N], boxes already decoded
(cx, cy, w, h in model pixels) and class scores without objectness; input RGB / 255,
letterboxed to the centre with grey (114) borders, as Ultralytics `val` does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rayinfer.actors.families.detection import NmsFamily, one_3d_output
from rayinfer.actors.model import TensorSpec
from rayinfer.datasets.base import Sample
from rayinfer.datasets.images import Letterbox


class YoloV8(NmsFamily):
    name = "yolov8"
    multi_label = True  # as Ultralytics val

    @classmethod
    def matches(cls, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                metadata: Mapping[str, str] | None = None) -> str | None:
        wrong = one_3d_output(outputs)
        if wrong:
            return wrong
        _, channels, anchors = outputs[0].shape
        if channels is not None and channels < 5:
            return f"output {outputs[0].describe()} has {channels} channels, not 4 box + at least 1 class"
        if channels is not None and anchors is not None and channels >= anchors:
            return f"output {outputs[0].describe()} is not [1, 4+nc, N] with N anchors last"
        return None

    @classmethod
    def num_classes(cls, outputs: Sequence[TensorSpec], metadata: Mapping[str, str] | None = None) -> int | None:
        channels = outputs[0].shape[1]
        return channels - 4 if channels is not None else None

    def preprocess(self, raw: np.ndarray, sample: Sample) -> tuple[dict[str, np.ndarray], Letterbox]:
        return self.ultralytics_letterbox(raw, sample)

    def candidates(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Anchors whose best class clears the threshold first (Ultralytics' `xc`): the full
        # [N, nc] score matrix is never built for the rest.
        keep = np.flatnonzero(pred[4:].max(axis=0) > self.options.conf_thres)
        return pred[:4, keep].T, pred[4:, keep].T  # [n, 4], [n, nc]

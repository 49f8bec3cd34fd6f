"""YOLOX (Megvii's ONNX export, decode_in_inference off): output [1, N, 5+nc] on the
stride 8/16/32 grid (N = its cell count for the input size), boxes as grid offsets and
log sizes, an objectness score times each class score; input BGR 0-255, letterboxed to
the top-left corner at the exact ratio, as YOLOX's own evaluation does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rayinfer.actors.families.detection import NmsFamily, DetectionOptions, image_input_size, one_3d_output
from rayinfer.actors.model import TensorSpec
from rayinfer.datasets.base import Sample, SetupError
from rayinfer.datasets.images import Letterbox, letterbox, to_blob

STRIDES = (8, 16, 32)


def grid_cells(size: tuple[int, int]) -> int:
    """Anchors of the stride 8/16/32 grid for an (H, W) input: 8400 for 640x640."""
    return sum((size[0] // s) * (size[1] // s) for s in STRIDES)


class YoloX(NmsFamily):
    name = "yolox"
    multi_label = False  # one label per anchor, score = objectness x class

    def __init__(self, inputs: Sequence[TensorSpec], options: DetectionOptions, category_ids: Sequence[int],
                 metadata: Mapping[str, str] | None = None, outputs: Sequence[TensorSpec] = ()) -> None:
        super().__init__(inputs, options, category_ids, metadata, outputs)
        self._grid, self._strides = _grid(self.size)

    @classmethod
    def matches(cls, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                metadata: Mapping[str, str] | None = None) -> str | None:
        wrong = one_3d_output(outputs)
        if wrong:
            return wrong
        _, anchors, channels = outputs[0].shape
        if channels is not None and channels < 6:
            return f"output {outputs[0].describe()} has {channels} channels, not 4 box + objectness + at least 1 class"
        try:
            cells = grid_cells(image_input_size(inputs))
        except SetupError as exc:
            return str(exc)
        if anchors is not None and anchors != cells:
            return (f"output {outputs[0].describe()} has {anchors} anchors, not the {cells} cells of the "
                    f"stride {'/'.join(map(str, STRIDES))} grid for its input")
        return None

    @classmethod
    def num_classes(cls, outputs: Sequence[TensorSpec], metadata: Mapping[str, str] | None = None) -> int | None:
        channels = outputs[0].shape[2]
        return channels - 5 if channels is not None else None

    def preprocess(self, raw: np.ndarray, sample: Sample) -> tuple[dict[str, np.ndarray], Letterbox]:
        image, lb = letterbox(raw, self.size, center=False, exact_ratio=True, source=self.source_size(raw, sample))
        return {self.input_name: to_blob(image)}, lb

    def candidates(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes = np.empty((pred.shape[0], 4), np.float32)
        boxes[:, :2] = (pred[:, :2] + self._grid) * self._strides
        boxes[:, 2:] = np.exp(pred[:, 2:4]) * self._strides
        cls_scores = pred[:, 5:] * pred[:, 4:5]
        keep = np.flatnonzero(cls_scores.max(axis=1) > self.options.conf_thres)
        return boxes[keep], cls_scores[keep]


def _grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    grids, strides = [], []
    for stride in STRIDES:
        h, w = size[0] // stride, size[1] // stride
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        grids.append(np.stack([xs, ys], -1).reshape(-1, 2))
        strides.append(np.full((h * w, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)

"""RT-DETR / RT-DETRv2 / D-FINE / DEIM as their own repositories export them: two inputs,
`images` [B, 3, H, W] (RGB / 255, the image resized to the input size without keeping its
aspect ratio) and `orig_target_sizes` [B, 2] (the original image's width and height), and
three outputs, `labels` [B, N], `boxes` [B, N, 4] (x1, y1, x2, y2 in the original image's
pixels) and `scores` [B, N]: the top-k over queries x classes is done in the graph.

Decoding keeps scores above `conf_thres`, best first, at most `max_det`, clipped to the
image. Labels are class indices 0..nc-1, or the dataset's category ids with
`--category-labels` (the repositories' COCO configs remap to category ids). The outputs are
found by name, or else by shape and type (the 3-D one is the boxes; of the 2-D ones, the
integer one is the labels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rayinfer.actors.families.detection import DetectionFamily, DetectionOptions, best_first, image_input
from rayinfer.actors.families.rtdetr import stretch
from rayinfer.actors.model import TensorSpec
from rayinfer.datasets.base import Sample, SetupError
from rayinfer.datasets.images import Letterbox, to_blob


def _roles(outputs: Sequence[TensorSpec]) -> dict[str, int] | str:
    """{"labels", "boxes", "scores"} -> output index, or why the outputs are not those."""
    if len(outputs) != 3:
        return f"expects three outputs (labels, boxes, scores), the model has {[o.describe() for o in outputs]}"
    named = {o.name: i for i, o in enumerate(outputs)}
    if {"labels", "boxes", "scores"} <= set(named):
        return {k: named[k] for k in ("labels", "boxes", "scores")}
    boxes = [i for i, o in enumerate(outputs) if len(o.shape) == 3 and o.shape[2] == 4]
    flat = [i for i, o in enumerate(outputs) if len(o.shape) == 2]
    ints = [i for i in flat if np.issubdtype(outputs[i].dtype, np.integer)]
    floats = [i for i in flat if np.issubdtype(outputs[i].dtype, np.floating)]
    if len(boxes) != 1 or len(ints) != 1 or len(floats) != 1:
        return (f"outputs {[o.describe() for o in outputs]} are not labels [B, N] (integer), boxes [B, N, 4] "
                "and scores [B, N] (float)")
    return {"labels": ints[0], "boxes": boxes[0], "scores": floats[0]}


class Detr(DetectionFamily):
    name = "detr"
    options_used = ("conf_thres", "max_det", "category_labels", "reduced_decode")

    def __init__(self, inputs: Sequence[TensorSpec], options: DetectionOptions, category_ids: Sequence[int],
                 metadata: Mapping[str, str] | None = None, outputs: Sequence[TensorSpec] = ()) -> None:
        super().__init__(inputs, options, category_ids, metadata, outputs)
        self.sizes = next(i for i in inputs if i.name != self.input_name)
        roles = _roles(outputs)
        if isinstance(roles, str):
            raise SetupError(f"not a detr detector: {roles}")
        self.roles = roles

    @classmethod
    def matches(cls, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                metadata: Mapping[str, str] | None = None) -> str | None:
        if len(inputs) != 2:
            return f"expects two inputs (images, orig_target_sizes), the model has {[i.describe() for i in inputs]}"
        try:
            image = image_input(inputs)
        except SetupError as exc:
            return str(exc)
        sizes = next(i for i in inputs if i.name != image.name)
        if len(sizes.shape) != 2 or sizes.shape[1] not in (2, None):
            return f"input '{sizes.name}' is {sizes.describe()}, not the original sizes [B, 2]"
        roles = _roles(outputs)
        return roles if isinstance(roles, str) else None

    @classmethod
    def num_classes(cls, outputs: Sequence[TensorSpec], metadata: Mapping[str, str] | None = None) -> int | None:
        return None  # the labels say which class, not how many there are

    def preprocess(self, raw: np.ndarray, sample: Sample) -> tuple[dict[str, np.ndarray], Letterbox]:
        source = self.source_size(raw, sample)
        image, geometry = stretch(raw, self.size, source)
        sizes = np.array([[source[1], source[0]]], self.sizes.dtype)  # width, height
        return {self.input_name: to_blob(image, 1.0 / 255.0, swap_rb=True), self.sizes.name: sizes}, geometry

    def decode(self, outputs: Sequence[np.ndarray], geometry: Letterbox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        roles = self.roles
        labels = np.asarray(outputs[roles["labels"]][0]).astype(np.int64)
        boxes = np.asarray(outputs[roles["boxes"]][0], np.float32)
        scores = np.asarray(outputs[roles["scores"]][0], np.float32)
        keep = best_first(scores, self.options.conf_thres, self.options.max_det)
        xyxy = boxes[keep].copy()
        np.clip(xyxy[:, 0::2], 0, geometry.width, out=xyxy[:, 0::2])
        np.clip(xyxy[:, 1::2], 0, geometry.height, out=xyxy[:, 1::2])
        classes = labels[keep]
        if self.options.category_labels:
            index = {int(c): i for i, c in enumerate(self.category_ids)}
            classes = np.array([index.get(int(c), -1) for c in classes], np.int64)
        return xyxy, scores[keep], classes

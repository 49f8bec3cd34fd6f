"""Where a detector goes wrong, image by image: one matching of predictions to ground truth
at one IoU and one confidence, from which come the confusion matrix (classes + background)
and each image's false positives and missed objects.

The matching is Ultralytics' `ConfusionMatrix.process_batch`: class-agnostic, each
prediction and each object used at most once, the pairs of highest IoU first. A pair whose
classes agree is a true positive; one whose classes differ is a confusion, counted once as
a false positive (of the predicted class) and once as a missed object (of the true class).
Crowd regions are not objects: a prediction lying inside one (intersection over its own area
>= `iou`) is neither right nor wrong, as in COCOeval.

Parameters
    num_classes  K, the model's classes; class i is the dataset's i-th category
    iou          a prediction and an object match when their IoU >= iou (0.5: the IoU of the
                 summary's P and R)
    confidence   predictions scoring below it are not counted (the summary's best-F1 one)
    keep         how many of the worst and of the best images to keep, with their predictions

Arrays (numpy)
    boxes        [N, 4] float, COCO's [x, y, w, h] in pixels
    classes      [N] int, 0..K-1
    matrix       [K+1, K+1] int64: row = predicted class, column = true class; row K (background)
                 counts objects nothing found, column K predictions with no object under them

Use:
    errors = DetectionErrors(num_classes=80, iou=0.5, confidence=0.25, keep=8)
    for each image: errors.add(image_id, gt_boxes, gt_classes, gt_crowd, boxes, scores, classes)
    errors.matrix, errors.worst(), errors.best(), errors.totals()
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] IoU of two sets of [x, y, w, h] boxes."""
    inter = _intersection(a, b)
    area_a, area_b = a[:, 2] * a[:, 3], b[:, 2] * b[:, 3]
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y2 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    return np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)


def match(gt_boxes: np.ndarray, boxes: np.ndarray, iou: float) -> np.ndarray:
    """[M, 2] (object index, prediction index) pairs: class-agnostic, highest IoU first, each
    object and each prediction in at most one pair."""
    if not len(gt_boxes) or not len(boxes):
        return np.zeros((0, 2), np.int64)
    overlap = box_iou(gt_boxes, boxes)
    g, p = np.nonzero(overlap >= iou)
    order = np.argsort(-overlap[g, p], kind="stable")
    g, p = g[order], p[order]
    _, first = np.unique(p, return_index=True)  # each prediction's best object
    g, p = g[np.sort(first)], p[np.sort(first)]
    _, first = np.unique(g, return_index=True)  # then each object's best prediction
    keep = np.sort(first)
    return np.stack([g[keep], p[keep]], axis=1)


@dataclass(order=True)
class ImageErrors:
    """One image at the analysis' IoU and confidence. `ok` holds its predictions' verdicts
    (True: a true positive) and `found` its objects' (True: matched by the right class), in
    the order of `boxes` and of the ground truth it was given."""

    image_id: int
    objects: int
    false_positives: int
    missed: int
    boxes: np.ndarray = field(compare=False, repr=False)
    scores: np.ndarray = field(compare=False, repr=False)
    classes: np.ndarray = field(compare=False, repr=False)
    ok: np.ndarray = field(compare=False, repr=False)
    found: np.ndarray = field(compare=False, repr=False)

    @property
    def errors(self) -> int:
        return self.false_positives + self.missed


class DetectionErrors:
    """The running matrix and per-image counts (four integers per image; the predictions of
    the `keep` worst and `keep` best images only)."""

    def __init__(self, num_classes: int, iou: float = 0.5, confidence: float = 0.25, keep: int = 8) -> None:
        self.num_classes, self.iou, self.confidence, self.keep = num_classes, iou, confidence, keep
        self.matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
        self.images: list[tuple[int, int, int, int]] = []  # (image_id, objects, false positives, missed)
        self._worst: list[tuple[Any, ...]] = []  # min-heaps: the smallest key leaves first
        self._best: list[tuple[Any, ...]] = []

    def add(self, image_id: int, gt_boxes: np.ndarray, gt_classes: np.ndarray, gt_crowd: np.ndarray,
            boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> ImageErrors:
        """Match one image's predictions (any score: those below `confidence` are dropped
        here) to its ground truth (crowd regions included, marked by `gt_crowd`)."""
        k = self.num_classes
        keep = scores >= self.confidence
        boxes, scores, classes = boxes[keep].reshape(-1, 4), scores[keep], classes[keep].astype(np.int64)
        crowd = gt_crowd.astype(bool)
        gt_boxes, gt_classes, crowd_boxes = gt_boxes[~crowd].reshape(-1, 4), gt_classes[~crowd].astype(np.int64), gt_boxes[crowd]
        pairs = match(gt_boxes, boxes, self.iou)
        matched_p = np.zeros(len(boxes), bool)
        matched_p[pairs[:, 1]] = True
        if len(crowd_boxes) and (~matched_p).any():  # inside a crowd region: neither right nor wrong
            area = np.maximum(boxes[:, 2] * boxes[:, 3], 1e-12)
            inside = (_intersection(boxes, crowd_boxes) / area[:, None] >= self.iou).any(axis=1) & ~matched_p
            boxes, scores, classes = boxes[~inside], scores[~inside], classes[~inside]
            pairs[:, 1] = np.cumsum(~inside)[pairs[:, 1]] - 1  # the kept predictions' new indices
            matched_p = matched_p[~inside]
        matched_g = np.zeros(len(gt_boxes), bool)
        matched_g[pairs[:, 0]] = True
        np.add.at(self.matrix, (classes[pairs[:, 1]], gt_classes[pairs[:, 0]]), 1)
        np.add.at(self.matrix, (np.full((~matched_g).sum(), k), gt_classes[~matched_g]), 1)
        np.add.at(self.matrix, (classes[~matched_p], np.full((~matched_p).sum(), k)), 1)
        right = classes[pairs[:, 1]] == gt_classes[pairs[:, 0]]
        ok = np.zeros(len(boxes), bool)
        ok[pairs[right, 1]] = True
        found = np.zeros(len(gt_boxes), bool)
        found[pairs[right, 0]] = True
        image = ImageErrors(int(image_id), len(gt_boxes), int((~ok).sum()), int((~found).sum()),
                            boxes, scores, classes, ok, found)
        self.images.append((image.image_id, image.objects, image.false_positives, image.missed))
        self._push(self._worst, (image.errors, image.objects, -image.image_id), image)
        if image.objects and not image.errors:
            self._push(self._best, (image.objects, -image.image_id), image)
        return image

    def _push(self, heap: list[tuple[Any, ...]], key: tuple[Any, ...], image: ImageErrors) -> None:
        if self.keep <= 0:
            return
        item = (*key, image)
        if len(heap) < self.keep:
            heapq.heappush(heap, item)
        elif key > heap[0][:-1]:
            heapq.heapreplace(heap, item)

    def worst(self) -> list[ImageErrors]:
        """The `keep` images with the most errors (false positives + missed), most first;
        ties: more objects, then the smaller image id."""
        return [item[-1] for item in sorted(self._worst, key=lambda t: t[:-1], reverse=True) if item[0] > 0]

    def best(self) -> list[ImageErrors]:
        """Up to `keep` images without an error, those with the most objects first."""
        return [item[-1] for item in sorted(self._best, key=lambda t: t[:-1], reverse=True)]

    def totals(self) -> dict[str, int]:
        """True positives, false positives (confusions included), missed objects, over all images."""
        tp = int(np.trace(self.matrix[:-1, :-1]))
        return {"true_positives": tp, "false_positives": int(self.matrix[:-1].sum()) - tp,
                "missed": int(self.matrix[:, :-1].sum()) - tp}

    def normalized(self) -> np.ndarray:
        """[K+1, K+1] float: each column divided by its sum (where a true class went; the
        background column: what the unmatched predictions claimed to be), as Ultralytics plots it."""
        sums = self.matrix.sum(axis=0, keepdims=True)
        return np.divide(self.matrix, sums, out=np.zeros(self.matrix.shape), where=sums > 0)

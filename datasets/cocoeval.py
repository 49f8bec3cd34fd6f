"""COCOeval's bbox metrics in memory that does not grow with Python objects per detection.

pycocotools' `COCOeval` keeps every detection as a dict, twice (`loadRes`, `_dts`), and an
`evalImgs` entry per image, class and area range: about 2 KB per detection, 2 GB for 2,000
images of a real detector's 300 detections each. `StreamingCocoEval` runs pycocotools itself
(`COCOeval.evaluate`, the reference matching code) a batch of images at a time, and of its
output keeps only what `accumulate` reads, per detection:

    score       float32 or float64      the detection's score (float32 when that holds it
                                        exactly, as for scores a model wrote as float32)
    image       int32                   position of its image in the sorted image ids
    rank        uint16                  its place among its image's detections of that class,
                                        by score (pycocotools' per-image `maxDet` cut)
    tp, fp      uint8 [ceil(A*T/8)]     bits per (area range, IoU threshold): a true positive,
                                        a false positive; neither = ignored (crowd or area)

kept per class, that is 20 bytes for COCO's A=4 area ranges and T=10 IoU thresholds, plus
the number of ground-truth objects that count, per class and area range. `finish()` then does
`COCOeval.accumulate`'s work on those arrays, the same operations in the same order (so the
same bits: tests compare the two), and `COCOeval.summarize` turns them into the 12 numbers.

    ev = StreamingCocoEval(coco_gt, image_ids)
    for results, ids in shards:     # results: N x 7 [image_id, x, y, w, h, score, category_id]
        ev.add(results, ids)        # ids: the images these results cover (none = all missed)
    scores = ev.finish()            # .stats, .eval["precision"] [T,R,K,A,M], .gt_counts,
                                    # .confidence_curves (P and R per class vs confidence)

Images in `image_ids` never added count as images without detections (their objects are
misses), as in `COCOeval` with `params.imgIds` set.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Images per pycocotools `evaluate` call: bounds the Python objects alive at once.
BATCH_IMAGES = 64

#: The confidence thresholds of `ConfidenceCurves` (Ultralytics' grid: 1,000 points in [0, 1]).
CONFIDENCES = np.linspace(0, 1, 1000)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """pycocotools prints progress to stdout; send it to the debug log instead."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    if buf.getvalue().strip():
        log.debug("pycocotools: %s", buf.getvalue().strip())


@dataclass
class ConfidenceCurves:
    """Precision and recall of the detections scoring at least each confidence threshold,
    per class, at IoU 0.5, all areas, COCO's 100 detections per image (the operating point
    a user picks a score threshold from, as Ultralytics' `val` prints P and R).

    confidence  [C]     the thresholds (`CONFIDENCES`)
    precision   [K, C]  TP / (TP + FP) of the detections scoring >= threshold (1 where none
                        does); NaN for classes without ground truth
    recall      [K, C]  TP / ground-truth objects; NaN for classes without ground truth
    """

    confidence: np.ndarray
    precision: np.ndarray
    recall: np.ndarray

    def f1(self) -> np.ndarray:
        """[K, C] the harmonic mean of precision and recall."""
        return 2 * self.precision * self.recall / (self.precision + self.recall + 1e-16)

    def best(self) -> int:
        """The threshold's index where the mean F1 over classes with ground truth is highest,
        the curve first smoothed by a box filter 10% of its width (as Ultralytics'
        `ap_per_class`, so the printed P and R are comparable with `yolo val`'s)."""
        f1 = self.f1()
        valid = ~np.isnan(f1).all(axis=1)
        if not valid.any():
            return 0
        mean = f1[valid].mean(axis=0)
        n = round(len(mean) * 0.1 * 2) // 2 + 1  # an odd number of points
        padded = np.concatenate([np.full(n // 2, mean[0]), mean, np.full(n // 2, mean[-1])])
        return int(np.convolve(padded, np.ones(n) / n, mode="valid").argmax())


def at_confidence(scores: np.ndarray, tp: np.ndarray, fp: np.ndarray, gt: int,
                  thresholds: np.ndarray = CONFIDENCES) -> tuple[np.ndarray, np.ndarray]:
    """(precision [C], recall [C]) of the detections scoring >= each threshold.

    scores: the class's detections sorted by score, descending; tp, fp: cumulative true and
    false positives along them (ignored detections add to neither); gt: objects that count.
    """
    n = np.searchsorted(-scores, -thresholds, side="right")  # detections scoring >= threshold
    tp_at = np.where(n > 0, tp[np.maximum(n - 1, 0)] if len(tp) else 0, 0)
    fp_at = np.where(n > 0, fp[np.maximum(n - 1, 0)] if len(fp) else 0, 0)
    found = tp_at + fp_at
    precision = np.where(found > 0, tp_at / np.maximum(found, 1), 1.0)
    return precision, tp_at / gt


@dataclass
class CocoScores:
    """What `COCOeval` holds after evaluate -> accumulate -> summarize, minus the detections.

    `params` and `eval` are pycocotools' own (`eval["precision"]`: [T IoUs, R recall
    thresholds, K classes, A areas, M max detections], -1 where a class has no ground truth).
    """

    params: Any
    eval: dict[str, Any]
    stats: np.ndarray
    #: non-crowd ground-truth objects in the evaluated images, per category id
    gt_counts: dict[int, int]
    detections: int
    #: evaluated images holding at least one such object, per category id
    gt_images: dict[int, int]
    confidence_curves: ConfidenceCurves


class StreamingCocoEval:
    """COCOeval (bbox) over `image_ids` of the ground truth `coco_gt`, fed results in pieces."""

    def __init__(self, coco_gt: Any, image_ids: Sequence[int], batch_images: int = BATCH_IMAGES) -> None:
        from pycocotools.cocoeval import Params

        self.coco_gt = coco_gt
        self.params = Params(iouType="bbox")
        self.params.imgIds = sorted({int(i) for i in image_ids})
        self.params.catIds = sorted(coco_gt.getCatIds())
        self.batch_images = batch_images
        self._image_ids = np.asarray(self.params.imgIds, np.int64)
        self._todo = set(self.params.imgIds)
        self._buffer: list[tuple[np.ndarray, list[int]]] = []
        self._buffered = 0
        self._kept: dict[int, list[tuple[np.ndarray, ...]]] = {}  # class position -> pieces
        K, A = len(self.params.catIds), len(self.params.areaRng)
        self._npig = np.zeros((K, A), np.int64)  # ground truth that counts, per class and area
        self._gt_images = np.zeros(K, np.int64)  # images with such ground truth (area all), per class
        self.detections = 0

    def add(self, results: np.ndarray, image_ids: Sequence[int]) -> None:
        """Results (N x 7) for the images `image_ids`; each image is added once."""
        ids = sorted({int(i) for i in image_ids})
        fresh = self._todo.intersection(ids)
        if len(fresh) != len(ids):
            bad = sorted(set(ids) - fresh)[:10]
            raise ValueError(f"images {bad} are not to be evaluated or were added already")
        results = np.asarray(results, np.float64).reshape(-1, 7)
        if len(results) and not np.isin(results[:, 0], ids).all():
            raise ValueError("results for images outside the ids given with them")
        self._todo -= fresh
        self._buffer.append((results, ids))
        self._buffered += len(ids)
        if self._buffered >= self.batch_images:
            self._flush()

    def finish(self) -> CocoScores:
        """Accumulate and summarize; images never added count as having no detections."""
        if self._todo:
            self._buffer.append((np.zeros((0, 7)), sorted(self._todo)))
            self._todo = set()
        self._flush()
        precision, recall, scores, curves = self._accumulate()
        from pycocotools.cocoeval import COCOeval

        p = self.params
        ev = COCOeval(iouType="bbox")
        ev.params = p
        ev.eval = {"params": p, "counts": list(precision.shape), "precision": precision, "recall": recall,
                   "scores": scores}
        with quiet():
            ev.summarize()
        # area "all" ignores only crowds: its counting ground truth is the non-crowd objects
        gt_counts = {int(c): int(n) for c, n in zip(p.catIds, self._npig[:, 0])}
        gt_images = {int(c): int(n) for c, n in zip(p.catIds, self._gt_images)}
        return CocoScores(p, ev.eval, ev.stats, gt_counts, self.detections, gt_images, curves)

    # -- evaluate: pycocotools, a batch at a time ----------------------------------------
    def _flush(self) -> None:
        if not self._buffer:
            return
        results = np.concatenate([r for r, _ in self._buffer])
        ids = sorted(i for _, batch in self._buffer for i in batch)
        self._buffer, self._buffered = [], 0
        results = results[np.argsort(results[:, 0], kind="stable")]  # an image's rows keep their order
        column = results[:, 0]
        for start in range(0, len(ids), self.batch_images):
            batch = ids[start:start + self.batch_images]
            lo, hi = np.searchsorted(column, batch[0], "left"), np.searchsorted(column, batch[-1], "right")
            self._evaluate(results[lo:hi], batch)

    def _evaluate(self, results: np.ndarray, ids: list[int]) -> None:
        from pycocotools.cocoeval import COCOeval

        with quiet():
            ev = COCOeval(self.coco_gt, self._results(results), "bbox")
            ev.params.imgIds = ids
            ev.params.catIds = self.params.catIds
            ev.evaluate()
        self.detections += len(results)
        K, A, I = len(self.params.catIds), len(self.params.areaRng), len(ids)
        image_pos = np.searchsorted(self._image_ids, ev.params.imgIds).astype(np.int32)
        for k in range(K):
            scores, images, ranks, tps, fps = [], [], [], [], []
            for i in range(I):
                per_area = [ev.evalImgs[(k * A + a) * I + i] for a in range(A)]
                if per_area[0] is None:  # no ground truth and no detection of class k here
                    continue
                for a, e in enumerate(per_area):
                    self._npig[k, a] += np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
                self._gt_images[k] += bool(np.count_nonzero(np.asarray(per_area[0]["gtIgnore"]) == 0))
                d = len(per_area[0]["dtScores"])
                if d == 0:
                    continue
                matched = np.stack([e["dtMatches"] > 0 for e in per_area])  # [A, T, D]
                ignored = np.stack([e["dtIgnore"].astype(bool) for e in per_area])
                tps.append((matched & ~ignored).reshape(-1, d).T)  # [D, A*T]
                fps.append((~matched & ~ignored).reshape(-1, d).T)
                scores.append(np.asarray(per_area[0]["dtScores"], np.float64))
                images.append(np.full(d, image_pos[i], np.int32))
                ranks.append(np.arange(d, dtype=np.uint16))
            if scores:
                score = np.concatenate(scores)
                narrow = score.astype(np.float32)
                self._kept.setdefault(k, []).append((
                    narrow if np.array_equal(narrow, score) else score, np.concatenate(images),
                    np.concatenate(ranks), np.packbits(np.concatenate(tps), axis=1),
                    np.packbits(np.concatenate(fps), axis=1)))

    def _results(self, results: np.ndarray) -> Any:
        """pycocotools' results object for `results` (`loadRes` cannot take none)."""
        if len(results):
            return self.coco_gt.loadRes(results)
        from pycocotools.coco import COCO

        empty = COCO()
        empty.dataset = {"images": self.coco_gt.dataset["images"], "categories": self.coco_gt.dataset["categories"],
                         "annotations": []}
        empty.createIndex()
        return empty

    # -- accumulate: COCOeval.accumulate on the compact arrays ---------------------------
    def _accumulate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, ConfidenceCurves]:
        """COCOeval.accumulate: per class and max detections, the detections in image order
        sorted by score (mergesort, as pycocotools), cumulative true and false positives per
        area range and IoU threshold, interpolated precision at the recall thresholds. One
        class at a time and one (area, IoU) bit at a time, so the working memory is a few
        arrays of one class's detections. On the way, at IoU 0.5, area all and the most
        detections, the confidence curves."""
        p = self.params
        T, R, K, A, M = len(p.iouThrs), len(p.recThrs), len(p.catIds), len(p.areaRng), len(p.maxDets)
        precision = -np.ones((T, R, K, A, M))
        recall = -np.ones((T, K, A, M))
        scores = -np.ones((T, R, K, A, M))
        curves = ConfidenceCurves(CONFIDENCES, np.full((K, len(CONFIDENCES)), np.nan),
                                  np.full((K, len(CONFIDENCES)), np.nan))
        iou50 = int(np.argmin(np.abs(p.iouThrs - 0.5)))
        for k in range(K):
            score, image, rank, tp_bits, fp_bits = self._pieces_of(k)
            order = np.lexsort((rank, image))  # pycocotools concatenates images in id order
            for m, max_det in enumerate(sorted(p.maxDets)):
                sel = order[rank[order] < max_det]
                sel = sel[np.argsort(-score[sel], kind="mergesort")]
                sorted_scores, tp_rows, fp_rows = score[sel].astype(np.float64), tp_bits[sel], fp_bits[sel]
                nd = len(sel)
                for a in range(A):
                    npig = self._npig[k, a]
                    if npig == 0:
                        continue
                    for t in range(T):
                        byte, mask = (a * T + t) // 8, np.uint8(0x80 >> ((a * T + t) % 8))  # packbits' bit order
                        tp = np.cumsum((tp_rows[:, byte] & mask) != 0, dtype=np.float64)
                        fp = np.cumsum((fp_rows[:, byte] & mask) != 0, dtype=np.float64)
                        rc = tp / npig
                        pr = tp / (fp + tp + np.spacing(1))
                        recall[t, k, a, m] = rc[-1] if nd else 0
                        pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision made monotone
                        q, ss = np.zeros(R), np.zeros(R)
                        found = np.searchsorted(rc, p.recThrs, side="left")
                        ok = found < nd
                        q[ok], ss[ok] = pr[found[ok]], sorted_scores[found[ok]]
                        precision[t, :, k, a, m] = q
                        scores[t, :, k, a, m] = ss
                        if a == 0 and t == iou50 and m == M - 1:
                            curves.precision[k], curves.recall[k] = at_confidence(sorted_scores, tp, fp, npig)
        return precision, recall, scores, curves

    def _pieces_of(self, k: int) -> list[np.ndarray]:
        """The arrays kept for class k, merged (and let go: one class's at a time)."""
        A, T = len(self.params.areaRng), len(self.params.iouThrs)
        pieces = self._kept.pop(k, [])
        if not pieces:
            width = (A * T + 7) // 8
            return [np.zeros(0), np.zeros(0, np.int32), np.zeros(0, np.uint16), np.zeros((0, width), np.uint8),
                    np.zeros((0, width), np.uint8)]
        return [np.concatenate(c) for c in zip(*pieces)]


def reference_cocoeval(coco_gt: Any, results: Any, image_ids: Sequence[int]) -> Any:
    """pycocotools' COCOeval on everything at once: the reference `StreamingCocoEval` is
    tested against (it holds every detection as Python objects)."""
    from pycocotools.cocoeval import COCOeval

    with quiet():
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.params.imgIds = sorted({int(i) for i in image_ids})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev

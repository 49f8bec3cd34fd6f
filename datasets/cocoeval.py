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
from dataclasses import dataclass, field
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


#: How `StreamingCocoEval` matches detections to objects: "numpy" (`match`, every image of
#: a batch at once) or "pycocotools" (`COCOeval.evaluate` itself, the reference: slower).
ENGINES = ("numpy", "pycocotools")


@dataclass
class GroundTruth:
    """The ground truth's bbox columns, in file order (what `COCOeval` reads of each object).

    image, category  int64 [G]
    box              float64 [G, 4]  x, y, w, h
    area             float64 [G]     the file's `area` (COCO's area ranges use it, not the box's)
    crowd            bool [G]
    """

    image: np.ndarray
    category: np.ndarray
    box: np.ndarray
    area: np.ndarray
    crowd: np.ndarray
    #: positions by image, file order within, and their image ids (what `of_images` looks up)
    order: np.ndarray | None = field(default=None, repr=False)
    keys: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def of(cls, coco: Any) -> GroundTruth:
        """From a `CompactCoco`'s columns (and its index by image), or from a pycocotools
        `COCO`'s annotation dicts."""
        if hasattr(coco, "ann_bbox"):
            return cls(coco.ann_image, coco.ann_category, coco.ann_bbox, coco.ann_area, coco.ann_crowd.astype(bool),
                       coco._by_image, coco._image_keys)
        anns = coco.dataset.get("annotations", [])
        image = np.array([a["image_id"] for a in anns], np.int64).reshape(-1)
        order = np.argsort(image, kind="stable")
        return cls(image, np.array([a["category_id"] for a in anns], np.int64).reshape(-1),
                   np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4),
                   np.array([a["area"] for a in anns], np.float64).reshape(-1),
                   np.array([bool(a.get("iscrowd", 0)) for a in anns], bool).reshape(-1), order, image[order])

    def of_images(self, ids: Sequence[int]) -> GroundTruth:
        """The objects of the images `ids` (sorted), by image and in file order within."""
        pos = positions(self.order, self.keys, ids)
        return GroundTruth(self.image[pos], self.category[pos], self.box[pos], self.area[pos], self.crowd[pos])


def positions(order: np.ndarray, keys: np.ndarray, wanted: Sequence[int]) -> np.ndarray:
    """The positions `order` lists for each key of `wanted` in turn (`keys`: the key at each
    place of `order`, sorted): rows by image id, in the order the ids are given."""
    wanted = np.asarray(list(wanted), np.int64)
    lo, hi = np.searchsorted(keys, wanted, "left"), np.searchsorted(keys, wanted, "right")
    return np.concatenate([order[a:b] for a, b in zip(lo, hi)]) if len(wanted) else np.zeros(0, np.int64)


@dataclass
class Matches:
    """`match`'s outcome: what `COCOeval.evaluateImg` finds, for every detection it keeps.

    Per object (G):    gt_image (position in the batch's ids), gt_class (position in the
                       category ids): int64; gt_ignore bool [G, A] (crowd, or outside area range a)
    Per detection (D): image, klass int64; rank (place among its image's detections of its
                       class, by score); score float64; tp, fp bool [D, A, T] (neither: ignored)
    """

    gt_image: np.ndarray
    gt_class: np.ndarray
    gt_ignore: np.ndarray
    image: np.ndarray
    klass: np.ndarray
    rank: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    fp: np.ndarray


def box_ious(det: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of the pairs (det[i], gt[i]) of [x, y, w, h] boxes; a crowd region's is the
    intersection over the detection's area. The operations of pycocotools' `bbIou` in its
    order, so the same float64 bits (a threshold compares them exactly)."""
    w = np.minimum(det[:, 2] + det[:, 0], gt[:, 2] + gt[:, 0]) - np.maximum(det[:, 0], gt[:, 0])
    h = np.minimum(det[:, 3] + det[:, 1], gt[:, 3] + gt[:, 1]) - np.maximum(det[:, 1], gt[:, 1])
    inter = w * h
    det_area, gt_area = det[:, 2] * det[:, 3], gt[:, 2] * gt[:, 3]
    union = np.where(crowd, det_area, det_area + gt_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


#: `match`'s preference key: a preferred (not ignored) object's key is above any other's
_TIER = 1 << 40


def match(gt: GroundTruth, results: np.ndarray, ids: Sequence[int], cat_ids: np.ndarray, area_rng: np.ndarray,
          iou_thrs: np.ndarray, max_det: int) -> Matches:
    """pycocotools' `evaluateImg` for every (image, category, area range) of the images `ids`
    at once, on arrays. `results`: N x 7 rows of those images.

    Per image and category: detections by score (stable), the first `max_det` kept; objects
    not ignored before ignored ones. Each detection in turn, at each IoU threshold t and area
    range, takes the object of the highest IoU >= t (the last such in that order on a tie)
    among the objects not yet taken (a crowd region can be taken again), preferring one not
    ignored; it is ignored when that object is, or, unmatched, when its own area is out of
    range. Images and categories are independent, so the loop runs over the rank of a
    detection (at most `max_det` steps), every image and category in each step, and visits
    only the pairs whose IoU reaches the lowest threshold."""
    ids = np.asarray(ids, np.int64)
    K, A, T = len(cat_ids), len(area_rng), len(iou_thrs)
    thresholds = np.minimum(iou_thrs, 1 - 1e-10)
    # objects: group = image position * K + class position (gt is by image, file order within)
    g_class = np.searchsorted(cat_ids, gt.category)
    known = (g_class < K) & (cat_ids[np.minimum(g_class, K - 1)] == gt.category) if K else np.zeros(len(gt.category), bool)
    g_image = np.searchsorted(ids, gt.image[known])
    g_class, g_box, g_area, g_crowd = g_class[known], gt.box[known], gt.area[known], gt.crowd[known]
    g_group = g_image * K + g_class
    g_order = np.argsort(g_group, kind="stable")
    g_image, g_class, g_box, g_area, g_crowd, g_group = (x[g_order] for x in (g_image, g_class, g_box, g_area,
                                                                               g_crowd, g_group))
    g_ignore = g_crowd[:, None] | (g_area[:, None] < area_rng[None, :, 0]) | (g_area[:, None] > area_rng[None, :, 1])
    # detections: those of a known category, by group, score descending (stable), max_det each
    d_class = np.searchsorted(cat_ids, results[:, 6]) if len(results) else np.zeros(0, np.int64)
    ok = (d_class < K) & (cat_ids[np.minimum(d_class, K - 1)] == results[:, 6]) if K else np.zeros(len(results), bool)
    results, d_class = results[ok], d_class[ok]
    d_image = np.searchsorted(ids, results[:, 0].astype(np.int64))
    d_group = d_image * K + d_class
    score = results[:, 5]
    order = np.lexsort((np.arange(len(results)), -score, d_group))
    d_group = d_group[order]
    starts = np.searchsorted(d_group, d_group, "left")
    rank = np.arange(len(d_group)) - starts
    keep = order[rank < max_det]
    rank = rank[rank < max_det]
    d_image, d_class, d_group, score, box = d_image[keep], d_class[keep], d_image[keep] * K + d_class[keep], \
        score[keep], results[keep, 1:5]
    D = len(keep)
    area = box[:, 2] * box[:, 3]
    d_out = (area[:, None] < area_rng[None, :, 0]) | (area[:, None] > area_rng[None, :, 1])  # [D, A]
    # candidate pairs: each detection with each object of its group, IoU >= the lowest threshold
    lo, hi = np.searchsorted(g_group, d_group, "left"), np.searchsorted(g_group, d_group, "right")
    n = hi - lo
    pair_det = np.repeat(np.arange(D), n)
    pair_gt = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(int(n.sum()))
    iou = box_ious(box[pair_det], g_box[pair_gt], g_crowd[pair_gt])
    near = iou >= thresholds.min()
    pair_det, pair_gt, iou = pair_det[near], pair_gt[near], iou[near]
    # a detection's pairs by rank, then by (IoU, object order): `q`, its candidates' order of preference
    by = np.lexsort((pair_gt, iou, pair_det, rank[pair_det]))
    pair_det, pair_gt, iou = pair_det[by], pair_gt[by], iou[by]
    positions = np.arange(len(pair_det))
    heads_all = np.r_[True, pair_det[1:] != pair_det[:-1]] if len(pair_det) else np.zeros(0, bool)
    q = positions - np.maximum.accumulate(np.where(heads_all, positions, 0))
    matched = np.zeros((D, A, T), bool)
    matched_ignored = np.zeros((D, A, T), bool)
    taken = np.zeros((len(g_group), A, T), bool)
    above = iou[:, None] >= thresholds[None, :]  # [P, T]
    preferred = ~g_ignore[pair_gt]  # [P, A]
    step = np.searchsorted(rank[pair_det], np.arange(max_det + 1))
    for r in range(max_det):
        a, b = step[r], step[r + 1]
        if a == b:
            continue
        dets, gts = pair_det[a:b], pair_gt[a:b]
        free = g_crowd[gts][:, None, None] | ~taken[gts]  # [P, A, T]
        eligible = above[a:b, None, :] & free
        key = np.where(eligible, preferred[a:b, :, None] * _TIER + q[a:b, None, None], -1)
        heads = np.flatnonzero(np.r_[True, dets[1:] != dets[:-1]])
        best = np.maximum.reduceat(key, heads, axis=0)  # [detections of rank r, A, T]
        owner = np.repeat(np.arange(len(heads)), np.diff(np.r_[heads, len(dets)]))
        win = eligible & (key == best[owner])
        taken[gts] |= win
        found = best >= 0
        matched[dets[heads]] = found
        matched_ignored[dets[heads]] = found & (best < _TIER)
    ignored = np.where(matched, matched_ignored, d_out[:, :, None])
    return Matches(g_image, g_class, g_ignore, d_image, d_class, rank, score, matched & ~ignored, ~matched & ~ignored)


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

    def __init__(self, coco_gt: Any, image_ids: Sequence[int], batch_images: int = BATCH_IMAGES,
                 engine: str = "numpy") -> None:
        from pycocotools.cocoeval import Params

        if engine not in ENGINES:
            raise ValueError(f"COCO engine {engine!r}: expected one of {', '.join(ENGINES)}")
        self.coco_gt = coco_gt
        self.engine = engine
        self._gt = GroundTruth.of(coco_gt) if engine == "numpy" else None
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
            if self.engine == "numpy":
                self._match(results[lo:hi], batch)
            else:
                self._evaluate(results[lo:hi], batch)

    # -- evaluate, the numpy engine: pycocotools' matching for every image of a batch at once -------
    def _match(self, results: np.ndarray, ids: list[int]) -> None:
        """`COCOeval.evaluate` (bbox) for the images `ids`, as arrays (`match`), its outcome
        kept as `_evaluate` keeps pycocotools' own."""
        self.detections += len(results)
        p = self.params
        gt = self._gt.of_images(ids)
        m = match(gt, results, ids, np.asarray(p.catIds, np.int64), np.asarray(p.areaRng, np.float64),
                  np.asarray(p.iouThrs, np.float64), max(p.maxDets))
        K = len(p.catIds)
        for a in range(len(p.areaRng)):
            self._npig[:, a] += np.bincount(m.gt_class[~m.gt_ignore[:, a]], minlength=K)
        counting = ~m.gt_ignore[:, 0]  # area "all": the non-crowd objects
        groups = np.unique(m.gt_image[counting] * K + m.gt_class[counting])
        self._gt_images += np.bincount(groups % K, minlength=K)
        if not len(m.score):
            return
        image_pos = np.searchsorted(self._image_ids, np.asarray(ids, np.int64))[m.image].astype(np.int32)
        tp = np.packbits(m.tp.reshape(len(m.score), -1), axis=1)
        fp = np.packbits(m.fp.reshape(len(m.score), -1), axis=1)
        order = np.argsort(m.klass, kind="stable")
        bounds = np.searchsorted(m.klass[order], np.arange(K + 1))
        for k in np.flatnonzero(np.diff(bounds)):
            sel = order[bounds[k]:bounds[k + 1]]
            score = m.score[sel]
            narrow = score.astype(np.float32)
            self._keep(int(k), (narrow if np.array_equal(narrow, score) else score, image_pos[sel],
                                m.rank[sel].astype(np.uint16), tp[sel], fp[sel]))

    # -- evaluate, the pycocotools engine: the reference, a batch of images at a time --------------
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
                self._keep(k, (
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
        class at a time, so the working memory is a few arrays of one class's detections.
        On the way, at IoU 0.5, area all and the most detections, the confidence curves.

        Only the true positives are visited: recall grows at them alone, so the first
        detection reaching a recall threshold above 0 is one (recall 0 is reached at the first
        detection, whatever it is), and precision falls between them, so
        the highest precision at or after a true positive is that of a true positive. Their
        precision is tp / (fp + tp + eps) with tp and fp the counts up to them, the figures
        pycocotools' cumulative sums hold there."""
        p = self.params
        T, R, K, A, M = len(p.iouThrs), len(p.recThrs), len(p.catIds), len(p.areaRng), len(p.maxDets)
        precision = -np.ones((T, R, K, A, M))
        recall = -np.ones((T, K, A, M))
        scores = -np.ones((T, R, K, A, M))
        curves = ConfidenceCurves(CONFIDENCES, np.full((K, len(CONFIDENCES)), np.nan),
                                  np.full((K, len(CONFIDENCES)), np.nan))
        iou50 = int(np.argmin(np.abs(p.iouThrs - 0.5)))
        zero = p.recThrs <= 0
        for k in range(K):
            score, image, rank, tp_bits, fp_bits = self._pieces_of(k)
            # pycocotools concatenates images in id order; int32 places: half the memory of
            # the largest class's index arrays
            order = np.lexsort((rank, image)).astype(np.int32)
            del image
            for m, max_det in enumerate(sorted(p.maxDets)):
                sel = order[rank[order] < max_det]
                sel = sel[np.argsort(-score[sel], kind="mergesort")]
                sorted_scores, nd = score[sel], len(sel)  # as kept: float32 where that is exact
                tp_rows, fp_rows = tp_bits[sel], fp_bits[sel]
                del sel
                for a in range(A):
                    npig = self._npig[k, a]
                    if npig == 0:
                        continue
                    for t in range(T):
                        tp_bit, fp_bit = _bit(tp_rows, a * T + t), _bit(fp_rows, a * T + t)
                        at = np.flatnonzero(tp_bit)  # the true positives' places
                        fp_at = np.searchsorted(np.flatnonzero(fp_bit), at).astype(np.float64)
                        tp = np.arange(1, len(at) + 1, dtype=np.float64)
                        rc = tp / npig
                        recall[t, k, a, m] = len(at) / npig if nd else 0
                        pr = tp / (fp_at + tp + np.spacing(1))
                        pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision made monotone
                        q, ss = np.zeros(R), np.zeros(R)
                        found = np.searchsorted(rc, p.recThrs, side="left")
                        ok = found < len(at)
                        q[ok], ss[ok] = pr[found[ok]], sorted_scores[at[found[ok]]]
                        if nd:  # recall >= 0 holds from the first detection on, whatever it is
                            q[zero] = pr[0] if len(at) else 0.0
                            ss[zero] = sorted_scores[0]
                        precision[t, :, k, a, m] = q
                        scores[t, :, k, a, m] = ss
                        if a == 0 and t == iou50 and m == M - 1:
                            curves.precision[k], curves.recall[k] = at_confidence(
                                sorted_scores.astype(np.float64), np.cumsum(tp_bit, dtype=np.float64),
                                np.cumsum(fp_bit, dtype=np.float64), npig)
        return precision, recall, scores, curves

    def _keep(self, k: int, piece: tuple[np.ndarray, ...]) -> None:
        """Keep a batch's arrays for class k (score, image, rank, tp bits, fp bits)."""
        self._kept.setdefault(k, []).append(piece)

    def _pieces_of(self, k: int) -> list[np.ndarray]:
        """The arrays kept for class k, merged (and let go: one class's at a time)."""
        A, T = len(self.params.areaRng), len(self.params.iouThrs)
        pieces = self._kept.pop(k, [])
        if not pieces:
            width = (A * T + 7) // 8
            return [np.zeros(0), np.zeros(0, np.int32), np.zeros(0, np.uint16), np.zeros((0, width), np.uint8),
                    np.zeros((0, width), np.uint8)]
        return [np.concatenate(c) for c in zip(*pieces)]


def _bit(packed: np.ndarray, j: int) -> np.ndarray:
    """[D] bool: bit j of each row of `np.packbits`' output (its order: the high bit first).
    One column at a time: unpacking every bit at once would hold A*T bytes per detection."""
    return (packed[:, j // 8] & np.uint8(0x80 >> (j % 8))) != 0


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

"""The error analysis behind the report's confusion matrix and image galleries
(datasets/detection_errors.py), on hand-made images whose answers are known."""

from __future__ import annotations

import numpy as np

from rayinfer.datasets.detection_errors import DetectionErrors, box_iou, match

NONE = np.zeros((0, 4))


def _add(errors, gt, gt_cls, boxes, scores, cls, crowd=None, image_id=1):
    gt = np.array(gt, float).reshape(-1, 4)
    crowd = np.zeros(len(gt), np.uint8) if crowd is None else np.array(crowd, np.uint8)
    return errors.add(image_id, gt, np.array(gt_cls, int), crowd, np.array(boxes, float).reshape(-1, 4),
                      np.array(scores, float), np.array(cls, int))


def test_iou_of_known_boxes():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5]], float)
    assert np.allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]])


def test_a_right_box_a_wrong_class_a_duplicate_and_a_miss_land_where_they_belong():
    errors = DetectionErrors(num_classes=3, iou=0.5, confidence=0.3)
    # object 0 (class 0) found; object 1 (class 1) predicted as class 2; object 2 (class 2) missed;
    # a duplicate of object 0 and a low-scoring box (dropped, under the confidence)
    image = _add(errors, [[0, 0, 10, 10], [50, 50, 10, 10], [100, 100, 10, 10]], [0, 1, 2],
                 [[0, 0, 10, 10], [51, 50, 10, 10], [1, 0, 10, 10], [100, 100, 10, 10]], [0.9, 0.8, 0.7, 0.2],
                 [0, 2, 0, 2])
    m = errors.matrix  # row predicted, column true; index 3 = background
    assert m[0, 0] == 1 and m[2, 1] == 1 and m[3, 2] == 1 and m[0, 3] == 1 and m.sum() == 4
    assert (image.objects, image.false_positives, image.missed) == (3, 2, 2)
    assert image.ok.tolist() == [True, False, False] and image.found.tolist() == [True, False, False]
    assert errors.totals() == {"true_positives": 1, "false_positives": 2, "missed": 2}
    n = errors.normalized()
    assert np.allclose(n[:, :3].sum(axis=0), 1) and n[3, 2] == 1.0


def test_each_object_and_each_prediction_is_used_once_highest_iou_first():
    # two predictions on one object: the closer one matches, the other is a false positive
    pairs = match(np.array([[0, 0, 10, 10]], float), np.array([[2, 0, 10, 10], [0, 0, 10, 10]], float), 0.5)
    assert pairs.tolist() == [[0, 1]]
    # one prediction between two objects goes to the one it overlaps more
    pairs = match(np.array([[0, 0, 10, 10], [4, 0, 10, 10]], float), np.array([[3, 0, 10, 10]], float), 0.5)
    assert pairs.tolist() == [[1, 0]]
    assert match(NONE, np.array([[0, 0, 1, 1]], float), 0.5).shape == (0, 2)


def test_a_prediction_inside_a_crowd_region_is_neither_right_nor_wrong():
    errors = DetectionErrors(num_classes=1, iou=0.5, confidence=0.0)
    image = _add(errors, [[0, 0, 100, 100], [200, 200, 10, 10]], [0, 0], [[10, 10, 20, 20], [200, 200, 10, 10]],
                 [0.9, 0.8], [0, 0], crowd=[1, 0])
    assert (image.objects, image.false_positives, image.missed) == (1, 0, 0)
    assert errors.matrix[0, 0] == 1 and errors.matrix.sum() == 1
    assert len(image.boxes) == 1 and image.ok.tolist() == [True]


def test_an_image_without_predictions_misses_all_its_objects_and_one_without_objects_only_has_false_positives():
    errors = DetectionErrors(num_classes=2)
    a = _add(errors, [[0, 0, 10, 10], [20, 20, 10, 10]], [0, 1], NONE, [], [], image_id=1)
    b = _add(errors, NONE, [], [[0, 0, 5, 5]], [0.9], [1], image_id=2)
    assert (a.missed, a.false_positives, b.missed, b.false_positives) == (2, 0, 0, 1)
    assert errors.matrix[2, 0] == errors.matrix[2, 1] == errors.matrix[1, 2] == 1


def test_worst_and_best_keep_only_the_requested_images_in_order():
    rng = np.random.default_rng(0)
    errors = DetectionErrors(num_classes=2, keep=3)
    expected = []
    for image_id in range(40):
        n = int(rng.integers(1, 5))
        gt = np.column_stack([np.arange(n) * 30, np.zeros(n), np.full(n, 10), np.full(n, 10)])
        found = int(rng.integers(0, n + 1))  # the first `found` objects predicted exactly
        extra = int(rng.integers(0, 3))  # false positives far away
        boxes = np.vstack([gt[:found], np.column_stack([np.full(extra, 500), np.arange(extra) * 30,
                                                        np.full(extra, 10), np.full(extra, 10)])])
        _add(errors, gt, np.zeros(n), boxes, np.full(len(boxes), 0.9), np.zeros(len(boxes)), image_id=image_id)
        expected.append(((n - found) + extra, n, -image_id))
    worst = errors.worst()
    assert [(w.errors, w.objects, -w.image_id) for w in worst] == sorted(expected, reverse=True)[:3]
    perfect = sorted(((n, i) for e, n, i in expected if e == 0), reverse=True)[:3]  # i: minus the id
    assert [(b.objects, -b.image_id) for b in errors.best()] == perfect
    assert all(b.errors == 0 for b in errors.best())
    # per image counts add up to the matrix's totals
    totals = errors.totals()
    assert sum(fp for _, _, fp, _ in errors.images) == totals["false_positives"]
    assert sum(m for _, _, _, m in errors.images) == totals["missed"]
    assert len(errors.images) == 40

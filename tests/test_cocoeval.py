"""The streaming COCO evaluator against pycocotools' COCOeval, the reference: the same arrays
bit for bit, whatever the batches and the order they come in."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rayinfer.datasets.coco import CocoDataset
from rayinfer.datasets.cocoeval import ENGINES, StreamingCocoEval, reference_cocoeval
from rayinfer.datasets.synthetic import write_coco
from tests.conftest import need_shared


def noisy_results(coco, seed: int, clutter: int = 150) -> np.ndarray:
    """Detections as a detector makes them: most objects found with jittered boxes (some with
    the wrong class), plus clutter; scores with ties (rounded) so the order rules matter."""
    rng = np.random.default_rng(seed)
    cats = sorted(coco.getCatIds())
    rows = []
    for img in sorted(coco.getImgIds()):
        info = coco.imgs[img]
        for a in coco.loadAnns(coco.getAnnIds(imgIds=[img])):
            if rng.random() < 0.8:
                x, y, w, h = a["bbox"]
                j = rng.normal(0, 0.1, 4) * [w, h, w, h]
                cat = a["category_id"] if rng.random() < 0.9 else rng.choice(cats)
                rows.append([img, x + j[0], y + j[1], max(1, w + j[2]), max(1, h + j[3]), rng.random(), cat])
        for _ in range(rng.integers(0, clutter)):
            rows.append([img, rng.random() * info["width"], rng.random() * info["height"], rng.random() * 200 + 1,
                         rng.random() * 200 + 1, round(rng.random(), 2), rng.choice(cats[:10])])
    return np.array(rows, np.float64).reshape(-1, 7)


def plain_coco(dataset: CocoDataset):
    """pycocotools' own COCO over the same file: the reference ground truth."""
    from pycocotools.coco import COCO

    from rayinfer.datasets.cocoeval import quiet

    with quiet():
        return COCO(str(dataset.annotations))


def assert_same(streamed, reference) -> None:
    for key in ("precision", "recall", "scores"):
        assert np.array_equal(streamed.eval[key], reference.eval[key]), key
    assert np.array_equal(streamed.stats, reference.stats)


def stream(coco, results: np.ndarray, ids: list[int], order: list[int], per_add: int, batch_images: int,
           skip: set[int] = frozenset(), engine: str = "numpy"):
    ev = StreamingCocoEval(coco, ids, batch_images=batch_images, engine=engine)
    for start in range(0, len(order), per_add):
        chunk = [i for i in order[start:start + per_add] if i not in skip]
        ev.add(results[np.isin(results[:, 0], chunk)], chunk)
    return ev.finish()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("per_add,batch_images", [(1, 1), (5, 7), (1000, 64)])
def test_streaming_equals_pycocotools_on_the_shared_coco_mini(per_add, batch_images, engine):
    dataset = CocoDataset(need_shared("data", "coco-val2017-mini"))  # 79 images, crowds among them
    coco = dataset.coco
    ids = sorted(coco.getImgIds())
    results = noisy_results(coco, seed=per_add)
    order = list(np.random.default_rng(batch_images).permutation(ids))  # shards arrive in any order
    skipped = set(order[10:15])  # never added: their objects are misses, as failed samples
    streamed = stream(coco, results, ids, order, per_add, batch_images, skip=skipped, engine=engine)
    reference = reference_cocoeval(plain_coco(dataset), results[~np.isin(results[:, 0], list(skipped))], ids)
    assert_same(streamed, reference)
    assert 0.1 < streamed.stats[0] < 0.9
    assert streamed.detections == int((~np.isin(results[:, 0], list(skipped))).sum())
    crowd_free = {}
    for a in plain_coco(dataset).dataset["annotations"]:
        crowd_free[a["category_id"]] = crowd_free.get(a["category_id"], 0) + (0 if a["iscrowd"] else 1)
    assert {c: n for c, n in streamed.gt_counts.items() if n} == crowd_free


def test_streaming_equals_pycocotools_on_synthetic_data_and_through_the_dataset(tmp_path):
    dataset = CocoDataset(write_coco(tmp_path, n_images=12, seed=3))
    coco = dataset.coco
    ids = sorted(coco.getImgIds())
    results = noisy_results(coco, seed=9, clutter=30)
    subset = ids[2:9]
    reference = reference_cocoeval(plain_coco(dataset), results[np.isin(results[:, 0], subset)], subset)
    scores, evaluated, n = dataset.cocoeval(results, subset)  # rows of other images are left out
    assert evaluated == subset and n == int(np.isin(results[:, 0], subset).sum())
    assert_same(scores, reference)


def test_each_image_once_and_only_the_images_asked_for():
    dataset = CocoDataset(need_shared("data", "coco-val2017-mini"))
    ids = sorted(dataset.coco.getImgIds())
    ev = StreamingCocoEval(dataset.coco, ids[:10])
    ev.add(np.zeros((0, 7)), ids[:2])
    with pytest.raises(ValueError, match="added already"):
        ev.add(np.zeros((0, 7)), ids[1:3])
    with pytest.raises(ValueError, match="not to be evaluated"):
        ev.add(np.zeros((0, 7)), [ids[20]])
    with pytest.raises(ValueError, match="outside the ids"):
        ev.add(np.array([[ids[5], 1, 1, 5, 5, 0.5, 1]]), [ids[4]])


def test_per_detection_memory_is_compact():
    """What is kept per detection is a few bytes of arrays, not pycocotools' dicts."""
    dataset = CocoDataset(need_shared("data", "coco-val2017-mini"))
    coco = dataset.coco
    ids = sorted(coco.getImgIds())
    results = noisy_results(coco, seed=1)
    ev = StreamingCocoEval(coco, ids)
    ev.add(results, ids)
    ev._flush()
    pieces = [piece for of_class in ev._kept.values() for piece in of_class]
    kept = sum(a.nbytes for piece in pieces for a in piece)
    detections = sum(len(piece[0]) for piece in pieces)
    assert detections > 5000
    assert kept / detections <= 26  # 20 with float32 scores; these are float64


@pytest.mark.parametrize("which", ["shared", "synthetic"])
def test_the_compact_ground_truth_answers_as_pycocotools_does(tmp_path, which):
    root = need_shared("data", "coco-val2017-mini") if which == "shared" else write_coco(tmp_path, n_images=12, seed=5)
    dataset = CocoDataset(root)
    compact, plain = dataset.coco, plain_coco(dataset)
    assert len(compact) == len(plain.dataset["annotations"]) > 0
    ids, cats = sorted(plain.getImgIds()), sorted(plain.getCatIds())
    assert sorted(compact.getImgIds()) == ids and sorted(compact.getCatIds()) == cats
    queries = [dict(), dict(imgIds=ids[:7]), dict(imgIds=ids[::-3], catIds=cats[:3]), dict(catIds=cats[1]),
               dict(imgIds=ids[5], iscrowd=None), dict(imgIds=ids, iscrowd=False), dict(areaRng=[32 ** 2, 96 ** 2]),
               dict(imgIds=[-1])]
    for q in queries:
        ann_ids = compact.getAnnIds(**q)
        assert ann_ids == plain.getAnnIds(**q), q
        fields = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")
        assert [{k: a[k] for k in fields} for a in compact.loadAnns(ann_ids)] == [
            {k: a[k] for k in fields} for a in plain.loadAnns(ann_ids)], q
    assert compact.getImgIds(catIds=cats[0])  # the images with every category given
    for some in (cats[:1], cats[:2], cats[-2:]):
        assert sorted(compact.getImgIds(catIds=some)) == sorted(plain.getImgIds(catIds=some))
    with pytest.raises(KeyError, match="not in the file"):
        compact.loadAnns([10 ** 12])


def test_precision_and_recall_at_a_confidence_match_pycocotools_on_the_kept_detections():
    """P and R at a threshold (the confidence curves) against pycocotools run on only the
    detections scoring at least that threshold: its recall, and its matches counted by hand."""
    dataset = CocoDataset(need_shared("data", "coco-val2017-mini"))
    coco = dataset.coco
    ids = sorted(coco.getImgIds())
    results = noisy_results(coco, seed=11)
    streamed = stream(coco, results, ids, ids, 1000, 64)
    curves = streamed.confidence_curves
    p = streamed.params
    for c_index in (0, 300, 650):
        c = curves.confidence[c_index]
        reference = reference_cocoeval(plain_coco(dataset), results[results[:, 5] >= c], ids)
        A, I = len(p.areaRng), len(ids)
        for k, cat in enumerate(p.catIds):
            if streamed.gt_counts[cat] == 0:
                assert np.isnan(curves.recall[k, c_index])
                continue
            tp = fp = 0
            for i in range(I):
                e = reference.evalImgs[k * A * I + i]  # area "all"
                if e is None:
                    continue
                matched, ignored = e["dtMatches"][0] > 0, e["dtIgnore"][0].astype(bool)
                tp += int((matched & ~ignored).sum())
                fp += int((~matched & ~ignored).sum())
            assert curves.recall[k, c_index] == pytest.approx(reference.eval["recall"][0, k, 0, -1], abs=1e-12)
            assert curves.precision[k, c_index] == pytest.approx(tp / (tp + fp) if tp + fp else 1.0, abs=1e-12)
    images = {}
    for cat in p.catIds:
        images[cat] = len({a["image_id"] for a in coco.loadAnns(coco.getAnnIds(catIds=[cat], iscrowd=False))})
    assert streamed.gt_images == images


def test_the_best_f1_confidence_separates_found_objects_from_clutter():
    """Objects found with scores in [0.5, 1), clutter below 0.4: the best mean F1 lies between."""
    dataset = CocoDataset(need_shared("data", "coco-val2017-mini"))
    coco = dataset.coco
    ids = sorted(coco.getImgIds())
    results = noisy_results(coco, seed=5)
    found = results[:, 5] != np.round(results[:, 5], 2)  # clutter's scores are rounded
    rng = np.random.default_rng(0)
    results[found, 5] = 0.5 + 0.5 * rng.random(found.sum())
    results[~found, 5] = 0.4 * rng.random((~found).sum())
    curves = stream(coco, results, ids, ids, 1000, 64).confidence_curves
    assert 0.35 <= curves.confidence[curves.best()] <= 0.55


def hard_case(tmp_path):
    """A ground truth and detections made to hit every rule of COCOeval's matching: crowd
    regions (matched again and again), objects on the area ranges' edges (32^2, 96^2), images
    without objects, without detections, with neither, more than 100 detections of a class
    (the per-image cut), tied scores, IoUs of exactly 0.5, a detection equally good for two
    objects, and a category no object has."""
    rng = np.random.default_rng(11)
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3, 7)]
    images, anns, rows = [], [], []

    def obj(img, cat, box, crowd=0, area=None):
        anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat, "bbox": list(map(float, box)),
                     "area": float(area if area is not None else box[2] * box[3]), "iscrowd": crowd,
                     "segmentation": [] if not crowd else {"counts": [0], "size": [1, 1]}})

    for img in range(1, 21):
        images.append({"id": img, "file_name": f"{img:012d}.jpg", "width": 640, "height": 480})
        if img % 7 == 0:
            continue  # neither objects nor detections
        if img % 5 != 0:  # images 5, 10, 15: detections only
            for _ in range(rng.integers(1, 8)):
                x, y, w, h = rng.uniform(0, 400), rng.uniform(0, 300), rng.uniform(4, 200), rng.uniform(4, 150)
                obj(img, int(rng.choice([1, 2, 3])), (x, y, w, h))
            obj(img, 1, (10, 10, 32, 32))  # area exactly 32^2: small
            obj(img, 2, (100, 100, 96, 96), area=96 ** 2)  # exactly 96^2: medium
            obj(img, 2, (300, 200, 120, 80), crowd=1, area=9000)  # a crowd region
        if img % 4 == 0:
            continue  # objects without detections (4, 8, 12, 16)
        for a in [a for a in anns if a["image_id"] == img]:
            x, y, w, h = a["bbox"]
            for copy in range(3 if a["iscrowd"] else 2):  # duplicates: the second is a false positive
                j = rng.normal(0, 0.08, 4) * [w, h, w, h]
                rows.append([img, x + j[0], y + j[1], max(1, w + j[2]), max(1, h + j[3]),
                             round(rng.random(), 1), a["category_id"]])
        rows.append([img, 10, 10, 32, 16, 0.5, 1])  # IoU exactly 0.5 with the 32x32 object
        rows.append([img, 0, 0, 20, 20, 0.9, 7])  # a category without objects
        for _ in range(130):  # more than 100 of a class: only the best 100 count
            rows.append([img, rng.uniform(0, 600), rng.uniform(0, 440), rng.uniform(2, 60), rng.uniform(2, 60),
                         round(rng.random(), 2), 3])
    data = {"images": images, "annotations": anns, "categories": cats}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return tmp_path, np.array(rows, np.float64)


@pytest.mark.parametrize("batch_images", [1, 6, 64])
def test_the_numpy_engine_equals_pycocotools_on_crowds_area_edges_empty_images_and_ties(tmp_path, batch_images):
    root, results = hard_case(tmp_path)
    dataset = CocoDataset(root)
    plain = plain_coco(dataset)
    ids = sorted(plain.getImgIds())
    reference = reference_cocoeval(plain, results, ids)
    order = list(np.random.default_rng(batch_images).permutation(ids))
    got = {engine: stream(gt, results, ids, order, 3, batch_images, engine=engine)
           for engine in ENGINES for gt in (dataset.coco if engine == "numpy" else plain,)}
    for engine, scores in got.items():
        assert_same(scores, reference)
    a, b = got["numpy"], got["pycocotools"]
    assert a.gt_counts == b.gt_counts and a.gt_images == b.gt_images and a.detections == b.detections == len(results)
    assert np.array_equal(a.confidence_curves.precision, b.confidence_curves.precision, equal_nan=True)
    assert np.array_equal(a.confidence_curves.recall, b.confidence_curves.recall, equal_nan=True)
    assert 0.05 < reference.stats[0] < 0.95 and (reference.eval["precision"] == -1).any()  # some cells are empty


def test_an_unknown_engine_is_refused():
    dataset = CocoDataset(need_shared("data", "coco-val2017-mini"))
    with pytest.raises(ValueError, match="COCO engine 'fast': expected one of numpy, pycocotools"):
        StreamingCocoEval(dataset.coco, [1], engine="fast")

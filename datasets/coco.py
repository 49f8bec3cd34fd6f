"""COCO detection (val2017 layout): samples, images, ground truth and COCOeval metrics.

`data_root` holds `val2017/*.jpg` and `annotations/instances_val2017.json`, the
official layout; the 79-image mini set and the full 5000-image set read the same way,
from a local folder or object storage (`s3://bucket/coco`, see datasets/storage.py).
"""

from __future__ import annotations

import io
import itertools
import json
import posixpath
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pycocotools.coco import COCO

from rayinfer.datasets.base import Sample, SetupError, sample_location
from rayinfer.datasets.cocoeval import CocoScores, StreamingCocoEval, positions, quiet
from rayinfer.datasets.detection_errors import DetectionErrors, ImageErrors
from rayinfer.datasets.images import DEFAULT_MAX_PIXELS, read_image
from rayinfer.datasets.packed import PackedReading, member_key
from rayinfer.datasets.storage import Location, storage_error

log = logging.getLogger(__name__)

#: COCOeval's 12 summary numbers, named as in the COCO detection challenge.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class CocoDataset(PackedReading):
    """COCO instances annotations read with pycocotools. Pickled (to the inference actors,
    which only `load`) without the annotations loaded so far (cached properties)."""

    name = "coco"

    def __init__(self, root: str | Path | Location, split: str = "val2017", annotations: str | Path | None = None,
                 image_ids: Sequence[int] | None = None, limit: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, storage_options: dict[str, Any] | None = None) -> None:
        """`root`: a folder or a URL (`storage_options`: its file system's, see datasets/storage.py)."""
        self.root = Location.of(root, storage_options)
        self.max_pixels = max_pixels
        self.split = split
        self.annotations = (Location.of(annotations, storage_options) if annotations
                            else self.root / f"annotations/instances_{split}.json")
        self.image_ids = tuple(image_ids) if image_ids else None
        self.limit = limit

    @cached_property
    def coco(self) -> CompactCoco:
        """The ground truth: pycocotools' COCO API over compact columns (`CompactCoco`)."""
        try:
            found = self.annotations.is_file()
        except OSError as exc:
            raise SetupError(f"{self.annotations}: {storage_error(exc)}") from None
        if not found:
            raise SetupError(f"annotation file not found: {self.annotations} (expected DATA_ROOT/annotations/instances_{self.split}.json)")
        data = read_annotations(self.annotations)
        check_annotations(data, self.annotations)
        return CompactCoco(data)

    @cached_property
    def category_ids(self) -> list[int]:
        """COCO's category ids in sorted order: model class i is category_ids[i]."""
        return sorted(self.coco.getCatIds())

    @cached_property
    def category_names(self) -> dict[int, str]:
        return {c["id"]: c["name"] for c in self.coco.loadCats(self.category_ids)}

    def samples(self) -> list[Sample]:
        ids = sorted(self.coco.getImgIds())
        if self.image_ids:
            unknown = set(self.image_ids) - set(ids)
            if unknown:
                raise SetupError(f"image ids not in {self.annotations.name}: {sorted(unknown)[:10]}")
            wanted = set(self.image_ids)
            ids = [i for i in ids if i in wanted]
        if self.limit:
            ids = ids[: self.limit]
        pack = self.pack
        return [self._sample(img, pack) for img in self.coco.loadImgs(ids)]

    def sample(self, image_id: int) -> Sample:
        """The sample of one image (what `load` takes), e.g. for the report's gallery."""
        return self._sample(self.coco.loadImgs([image_id])[0], self.pack)

    def _sample(self, img: dict[str, Any], pack: Any) -> Sample:
        file = f"{self.split}/{img['file_name']}"
        info = {"image_id": int(img["id"]), "height": int(img["height"]), "width": int(img["width"])}
        if pack is not None:  # the packed shard holding it ("" if none does: an error row at load)
            info["pack"] = pack.shard_of.get(member_key(file), "")
        return Sample(sample_id=str(img["id"]), file=file, info=info)

    def load(self, sample: Sample, data: bytes | None = None, draft: tuple[int, int] | None = None) -> np.ndarray:
        """The image as uint8 BGR; `data`: its file's bytes, where `fetch` (PackedReading) read
        them already; `draft` (h, w): the size preprocessing shrinks it to, which lets a large
        JPEG be decoded at a reduced scale (see `read_image`; the annotations' size stays its
        size)."""
        size = (sample.info["height"], sample.info["width"]) if "height" in sample.info else None
        location = sample_location(self.root, sample.file)
        if self.reader is not None:  # a packed set: the member of its shard
            member = member_key(sample.file) + posixpath.splitext(sample.file)[1]
            data = self.packed_member(sample, member)
            # errors name the member in its shard: "ROOT/shards/shard-00001.tar:val2017/x.jpg: ..."
            return read_image(f"{self.root / self.packed_shard(sample)}:{member}", size, max_pixels=self.max_pixels,
                              data=data, draft=draft)
        return read_image(location, size, max_pixels=self.max_pixels, data=data, draft=draft)

    def pack_members(self, sample: Sample) -> dict[str, bytes]:
        """What `rayinfer pack` stores for a sample: the image file's bytes as they are, and its
        image record (WebDataset's `jpg` + `json`)."""
        from rayinfer.datasets.images import read_bytes

        ext = posixpath.splitext(sample.file)[1].lstrip(".").lower() or "jpg"
        record = self.coco.loadImgs([int(sample.sample_id)])[0]
        return {ext: read_bytes(sample_location(self.root, sample.file)), "json": json.dumps(record).encode()}

    def pack_extras(self) -> dict[str, Location]:
        """Files a packed copy keeps as they are (relative name -> source): the annotations."""
        return {f"annotations/instances_{self.split}.json": self.annotations}

    def fingerprint(self) -> dict[str, Any]:
        """The annotations' path and content hash (an edited category id changes it, whatever
        the size); the image list is hashed by the driver from `samples()`."""
        digest = self.annotations.sha256() if self.annotations.is_file() else None
        return {
            "dataset": self.name,
            "root": self.root.resolved(),
            "annotations": self.annotations.resolved(),
            "annotations_sha256": digest,
            "image_ids": list(self.image_ids) if self.image_ids else None,
            "limit": self.limit,
            **({"packed": self.pack.fingerprint()} if self.pack is not None else {}),
        }

    # -- evaluation ----------------------------------------------------------
    def results_array(self, predictions: pa.Table) -> np.ndarray:
        """Predictions as pycocotools' Nx7 array [image_id, x, y, w, h, score, category_id].

        Built from the Arrow columns directly (no Python object per detection: 5,000 images
        of up to 300 detections each are 1.5 million of them)."""
        import pyarrow.compute as pc

        if predictions.num_rows == 0:
            return np.zeros((0, 7))
        score = predictions.column("score")
        lengths = pc.list_value_length(score).fill_null(0).to_numpy()
        out = np.empty((int(lengths.sum()), 7), np.float64)
        out[:, 0] = np.repeat(predictions.column("image_id").to_numpy(), lengths)
        out[:, 1:5] = pc.list_flatten(pc.list_flatten(predictions.column("bbox"))).to_numpy().reshape(-1, 4)
        out[:, 5] = pc.list_flatten(score).to_numpy()
        out[:, 6] = pc.list_flatten(predictions.column("category_id")).to_numpy()
        return out

    def add_errors(self, errors: DetectionErrors, results: np.ndarray, image_ids: Sequence[int],
                   collect: bool = False) -> list[ImageErrors]:
        """Match the predictions `results` (`results_array`'s Nx7) of each of `image_ids`
        (images without a prediction included: their objects are missed) into `errors`;
        `collect`: return each image's ImageErrors too (else an empty list)."""
        cats = np.asarray(self.category_ids, np.int64)
        coco = self.coco
        results = results[results[:, 5] >= errors.confidence]  # `errors.add` drops the rest
        at = np.minimum(np.searchsorted(cats, results[:, 6].astype(np.int64)), len(cats) - 1)
        results = results[cats[at] == results[:, 6]]  # a category the dataset lacks cannot be matched
        results = results[np.argsort(results[:, 0], kind="stable")]
        keys = results[:, 0].astype(np.int64)
        images = []
        for image_id in image_ids:
            lo, hi = np.searchsorted(keys, image_id, "left"), np.searchsorted(keys, image_id, "right")
            r = results[lo:hi]
            pos = coco._positions([int(image_id)], ())
            image = errors.add(int(image_id), coco.ann_bbox[pos], np.searchsorted(cats, coco.ann_category[pos]),
                               coco.ann_crowd[pos], r[:, 1:5], r[:, 5], np.searchsorted(cats, r[:, 6].astype(np.int64)))
            if collect:
                images.append(image)
        return images

    def results_json(self, predictions: pa.Table) -> list[dict[str, Any]]:
        """The standard COCO results format, loadable by `COCO.loadRes`."""
        return [_result(r) for r in self.results_array(predictions)]

    def write_results_json(self, tables: pa.Table | Iterable[pa.Table], f: Any, chunk: int = 20_000) -> None:
        """`results_json` of a table, or of tables read one at a time (a run's shards), written
        to the binary file `f` a chunk of detections at a time: memory does not grow with
        the number of detections."""
        writer = ResultsJson(f, chunk)
        for table in [tables] if isinstance(tables, pa.Table) else tables:
            writer.write(self.results_array(table))
        writer.close()

    def exports(self, tables: Callable[[], Iterable[pa.Table]]) -> dict[str, Any]:
        """Extra files for the output directory: the standard `coco_results.json`, as a
        writer of its bytes (it holds every detection), reading the shards one at a time."""
        return {"coco_results.json": lambda f: self.write_results_json(tables(), f)}

    def evaluator(self, image_ids: Sequence[int | str], engine: str = "numpy") -> StreamingCocoEval:
        """COCOeval over `image_ids`, fed results a shard at a time (see datasets/cocoeval.py);
        `engine`: its matching, `cocoeval.ENGINES`."""
        return StreamingCocoEval(self.coco, [int(i) for i in image_ids], engine=engine)

    def cocoeval(self, predictions: pa.Table | np.ndarray | list[dict[str, Any]],
                 image_ids: Sequence[int | str] | None = None,
                 engine: str = "numpy") -> tuple[CocoScores | None, list[int], int]:
        """COCOeval of predictions held in memory; returns (the scores, or None when there
        is nothing to score, the evaluated image ids, the number of detections)."""
        if isinstance(predictions, pa.Table):
            if image_ids is None:
                image_ids = predictions.column("image_id").to_pylist()
            results = self.results_array(predictions)
        else:
            results = results_to_array(predictions)
            if image_ids is None:
                image_ids = np.unique(results[:, 0]).astype(int).tolist()
        ids = sorted({int(i) for i in image_ids})
        results = results[np.isin(results[:, 0], ids)]
        if len(results) == 0 or not ids:
            return None, ids, 0
        evaluator = self.evaluator(ids, engine)
        evaluator.add(results, ids)
        return evaluator.finish(), ids, int(len(results))

    def evaluate(self, predictions: pa.Table | np.ndarray | list[dict[str, Any]],
                 image_ids: Sequence[int | str] | None = None) -> dict[str, Any]:
        """COCOeval bbox metrics over `image_ids` (default: the images in `predictions`).

        Images that were evaluated but have no detections count as misses.
        """
        ev, ids, n = self.cocoeval(predictions, image_ids)
        table = per_class_table(ev, self.category_names) if ev is not None else []
        return coco_metrics(ev, ids, n, table)


class CompactCoco(COCO):
    """pycocotools' `COCO` whose annotations are numpy columns instead of one dict each.

    COCO keeps every annotation as a dict (with its polygons, and indexed twice): about
    0.9 KB each, 35 MB for the 39,500 objects of 5,000 images, for the whole job. The bbox
    evaluation reads only id, image, category, box, area and crowd flag, through
    `getAnnIds` and `loadAnns`; those are answered from 41 bytes per annotation, the dicts
    made for the images asked for (COCOeval asks for 64 images at a time). Images and
    categories stay pycocotools' dicts, so `loadImgs`, `loadCats`, `loadRes` and the rest
    work as ever.

    Columns (N annotations, in file order):
        id, image_id, category_id   int64 [N]
        bbox                        float64 [N, 4]  x, y, w, h as in the file
        area                        float64 [N]
        iscrowd                     uint8 [N]
    """

    def __init__(self, dataset: dict[str, Any]) -> None:
        """`dataset`: the parsed annotation file, its annotations as rows (id, image_id,
        category_id, x, y, w, h, area, iscrowd); the rows are consumed (the list emptied)."""
        super().__init__()
        rows = dataset.pop("annotations")
        n = len(rows)
        self.ann_id = np.fromiter((r[0] for r in rows), np.int64, n)
        self.ann_image = np.fromiter((r[1] for r in rows), np.int64, n)
        self.ann_category = np.fromiter((r[2] for r in rows), np.int64, n)
        self.ann_bbox = np.fromiter(itertools.chain.from_iterable(r[3:7] for r in rows), np.float64, 4 * n).reshape(n, 4)
        self.ann_area = np.fromiter((r[7] for r in rows), np.float64, n)
        self.ann_crowd = np.fromiter((r[8] for r in rows), np.uint8, n)
        rows.clear()
        self._by_image = np.argsort(self.ann_image, kind="stable")  # positions, image by image, file order within
        self._image_keys = self.ann_image[self._by_image]
        self._by_id = np.argsort(self.ann_id, kind="stable")
        self._ids_sorted = self.ann_id[self._by_id]
        self.dataset = dataset
        with quiet():
            self.createIndex()  # images and categories (no annotations left in `dataset`)

    def __len__(self) -> int:
        return len(self.ann_id)

    def _positions(self, img_ids: Sequence[int], cat_ids: Sequence[int]) -> np.ndarray:
        """Annotation positions in pycocotools' order: by the image ids given, file order within."""
        if len(img_ids):
            pos = positions(self._by_image, self._image_keys, img_ids)
        else:
            pos = np.arange(len(self.ann_id))
        if len(cat_ids):
            pos = pos[np.isin(self.ann_category[pos], np.asarray(list(cat_ids), np.int64))]
        return pos

    def getAnnIds(self, imgIds: Any = (), catIds: Any = (), areaRng: Any = (), iscrowd: Any = None) -> list[int]:
        img_ids = imgIds if _array_like(imgIds) else [imgIds]
        cat_ids = catIds if _array_like(catIds) else [catIds]
        pos = self._positions(img_ids, cat_ids)
        if len(areaRng):
            area = self.ann_area[pos]
            pos = pos[(area > areaRng[0]) & (area < areaRng[1])]
        if iscrowd is not None:
            pos = pos[self.ann_crowd[pos] == int(iscrowd)]
        return self.ann_id[pos].tolist()

    def loadAnns(self, ids: Any = ()) -> list[dict[str, Any]]:
        """Fresh dicts (callers such as COCOeval add keys to them) for the annotations `ids`."""
        ids = ids if _array_like(ids) else [ids]
        keys = np.asarray(list(ids), np.int64)
        at = np.searchsorted(self._ids_sorted, keys)
        found = np.zeros(len(keys), bool)
        if len(self._ids_sorted):
            found = self._ids_sorted[np.minimum(at, len(self._ids_sorted) - 1)] == keys
        if not found.all():
            raise KeyError(f"annotation ids not in the file: {keys[~found][:10].tolist()}")
        out = []
        for p in self._by_id[at].tolist():
            out.append({"id": int(self.ann_id[p]), "image_id": int(self.ann_image[p]),
                        "category_id": int(self.ann_category[p]), "bbox": self.ann_bbox[p].tolist(),
                        "area": float(self.ann_area[p]), "iscrowd": int(self.ann_crowd[p])})
        return out

    def getImgIds(self, imgIds: Any = (), catIds: Any = ()) -> list[int]:
        img_ids = imgIds if _array_like(imgIds) else [imgIds]
        cat_ids = catIds if _array_like(catIds) else [catIds]
        if not len(img_ids) and not len(cat_ids):
            return list(self.imgs.keys())
        ids = set(img_ids)
        for i, cat in enumerate(cat_ids):
            with_cat = set(self.ann_image[self.ann_category == cat].tolist())
            ids = with_cat if i == 0 and not ids else ids & with_cat
        return list(ids)


def _array_like(obj: Any) -> bool:
    return hasattr(obj, "__iter__") and hasattr(obj, "__len__")


def results_to_array(results: np.ndarray | list[dict[str, Any]]) -> np.ndarray:
    """COCO results (dicts, as in a results JSON, or an N x 7 array) as the N x 7 array."""
    if isinstance(results, np.ndarray):
        return results.astype(np.float64).reshape(-1, 7)
    out = np.empty((len(results), 7), np.float64)
    for n, r in enumerate(results):
        out[n, 0], out[n, 1:5], out[n, 5], out[n, 6] = r["image_id"], r["bbox"], r["score"], r["category_id"]
    return out


def read_annotations(path: Path | Location) -> dict[str, Any]:
    """The annotation file's images and categories (dicts) and its annotations as rows
    (`_annotation_row`: id, image_id, category_id, x, y, w, h, area, iscrowd), read as a
    stream: neither the file's text nor its annotations as dicts (nor their polygons, most
    of the file) ever exist whole. `json.load` held the text twice (bytes, then str) plus
    every object: 46 MB more at its peak for 5,000 images (21.5 MB of JSON) than for 1,000.
    An annotation that is not well formed stays a dict, for `check_annotations` to name."""
    import ijson

    def items(prefix: str) -> Iterator[Any]:
        f.seek(0)
        return ijson.items(f, prefix, use_float=True)

    path = Location.of(path)
    try:
        # ijson reads each section from the start: a local file seeks, a remote one is
        # fetched once (one request) and read from memory
        with path.open() if path.is_local else io.BytesIO(path.read_bytes()) as f:
            data: dict[str, Any] = {}
            for section in ("images", "categories"):
                for value in items(section):  # at most one: the whole (small) list
                    data[section] = value
            rows = []
            for ann in items("annotations.item"):
                if isinstance(ann, dict):
                    ann.pop("segmentation", None)
                    rows.append(_annotation_row(ann) or ann)
                else:
                    rows.append(ann)  # not an object: check_annotations names it
            if rows:
                data["annotations"] = rows
            else:  # none, or not a list: the whole file (it has no annotations to speak of) says which
                top = next(items(""), None)
                if isinstance(top, dict) and "annotations" in top:
                    data["annotations"] = top["annotations"]
    except ijson.JSONError as exc:  # yajl's message goes on with the text around the error
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SetupError(f"{path}: not a JSON file ({first})") from None
    except UnicodeDecodeError as exc:
        raise SetupError(f"{path}: not a JSON file ({exc})") from None
    except OSError as exc:  # a remote file that went away or a connection that broke
        raise SetupError(f"{path}: cannot read: {storage_error(exc)}") from None
    if not {"images", "annotations", "categories"} <= data.keys():
        raise SetupError(f"{path}: not COCO instances annotations (needs images, annotations, categories)")
    return data


def _annotation_row(a: dict[str, Any]) -> tuple | None:
    ints = (a.get("id"), a.get("image_id"), a.get("category_id"), a.get("iscrowd", 0))
    box, area = a.get("bbox"), a.get("area")
    if any(type(v) is not int for v in ints) or type(area) not in (int, float):  # type(): no bools
        return None
    if type(box) is not list or len(box) != 4 or any(type(v) not in (int, float) for v in box):
        return None
    return (*ints[:3], *box, area, ints[3])


class ResultsJson:
    """The COCO results JSON (`coco_results.json`) written to the binary file `f` in pieces,
    from `results_array`'s N x 7 arrays: each chunk of detections formatted by one `%` over
    its numbers (C code, no Python object per detection), boxes to 3 decimals and scores to
    5, as `results_json` rounds them.

        writer = ResultsJson(f)
        writer.write(results)       # any number of times
        writer.close()              # the closing bracket (f stays open)
    """

    ROW = '{"image_id": %d, "category_id": %d, "bbox": [%.3f, %.3f, %.3f, %.3f], "score": %.5f}'

    def __init__(self, f: Any, chunk: int = 20_000) -> None:
        self.f, self.chunk, self.first = f, chunk, True
        f.write(b"[")

    def write(self, results: np.ndarray) -> None:
        columns = results[:, [0, 6, 1, 2, 3, 4, 5]]
        for start in range(0, len(columns), self.chunk):
            part = columns[start:start + self.chunk]
            text = ",\n".join([self.ROW] * len(part)) % tuple(part.ravel().tolist())
            self.f.write((("\n" if self.first else ",\n") + text).encode())
            self.first = False

    def close(self) -> None:
        self.f.write(b"\n]\n")


def _result(r: np.ndarray) -> dict[str, Any]:
    return {"image_id": int(r[0]), "category_id": int(r[6]),
            "bbox": [round(float(v), 3) for v in r[1:5]], "score": round(float(r[5]), 5)}


def check_annotations(data: dict[str, Any], path: Path | Location) -> None:
    """The fields the job reads have the types COCO gives them, and image ids are unique:
    a SetupError naming the entry otherwise (pycocotools would let the last duplicate win)."""

    def bad(section: str, i: int, entry: Any, what: str) -> SetupError:
        ident = entry.get("id") if isinstance(entry, dict) else None
        return SetupError(f"{path}: {section}[{i}]{f' (id {ident!r})' if ident is not None else ''}: {what}")

    def need(section: str, i: int, entry: Any, key: str, kinds: tuple[type, ...], what: str) -> None:
        if not isinstance(entry, dict):
            raise bad(section, i, entry, "not an object")
        if key not in entry:
            raise bad(section, i, entry, f"missing '{key}'")
        value = entry[key]
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise bad(section, i, entry, f"'{key}' is {value!r}, expected {what}")

    for section in ("images", "annotations", "categories"):
        if not isinstance(data[section], list):
            raise SetupError(f"{path}: '{section}' is not a list")
    seen: dict[int, int] = {}
    duplicates = []
    for i, img in enumerate(data["images"]):
        need("images", i, img, "id", (int,), "an integer")
        need("images", i, img, "file_name", (str,), "a file name")
        for key in ("height", "width"):
            need("images", i, img, key, (int,), "a positive integer")
            if img[key] < 1:
                raise bad("images", i, img, f"'{key}' is {img[key]!r}, expected a positive integer")
        if img["id"] in seen:
            duplicates.append(img["id"])
        seen[img["id"]] = i
    if duplicates:
        raise SetupError(f"{path}: duplicate image ids {sorted(set(duplicates))[:10]}"
                         f"{' ...' if len(set(duplicates)) > 10 else ''}: each image must appear once")
    for i, cat in enumerate(data["categories"]):
        need("categories", i, cat, "id", (int,), "an integer")
    for i, ann in enumerate(data["annotations"]):
        if isinstance(ann, tuple):  # read as well-formed (`read_annotations`)
            continue
        for key in ("id", "image_id", "category_id"):
            need("annotations", i, ann, key, (int,), "an integer")
        need("annotations", i, ann, "bbox", (list,), "[x, y, w, h]")
        box = ann["bbox"]
        if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            raise bad("annotations", i, ann, f"'bbox' is {box!r}, expected [x, y, w, h]")
        need("annotations", i, ann, "area", (int, float), "a number")
        if "iscrowd" in ann:
            need("annotations", i, ann, "iscrowd", (int,), "0 or 1")
        raise bad("annotations", i, ann, "not a COCO annotation")  # every check passed: unreachable


def coco_metrics(ev: CocoScores | None, ids: Sequence[int], detections: int, per_class: list[dict[str, Any]]) -> dict[str, Any]:
    """metrics.json for COCO from a finished COCOeval (None: nothing to score) and its per-class table."""
    metrics: dict[str, Any] = {"images": len(ids), "detections": detections}
    if ev is None:
        metrics.update({k: 0.0 for k in STAT_NAMES})
        metrics.update({"P": 0.0, "R": 0.0, "best_f1_confidence": None})
        metrics["per_class_AP"] = {}
        metrics["per_class_AP50"] = {}
        return metrics
    metrics.update({k: float(v) for k, v in zip(STAT_NAMES, ev.stats)})
    # the operating point `yolo val` prints: mean P and R over classes with ground truth at
    # the confidence of the best mean F1 (IoU 0.5)
    present = [r for r in per_class if r["P"] is not None]
    metrics["P"] = float(np.mean([r["P"] for r in present])) if present else 0.0
    metrics["R"] = float(np.mean([r["R"] for r in present])) if present else 0.0
    metrics["best_f1_confidence"] = float(ev.confidence_curves.confidence[ev.confidence_curves.best()])
    metrics["per_class_AP"] = {row["class"]: row["AP"] for row in per_class}
    metrics["per_class_AP50"] = {row["class"]: row["AP50"] for row in per_class}
    return metrics


def _mean_valid(p: np.ndarray) -> float | None:
    return float(p[p > -1].mean()) if (p > -1).any() else None


def per_class_table(ev: CocoScores, names: dict[int, str]) -> list[dict[str, Any]]:
    """One row per category: AP, AP50 and AP by object area (COCO's small/medium/large),
    the ground-truth objects and the images holding them, and precision P and recall R at
    IoU 0.5 at the confidence of the best mean F1 (`ConfidenceCurves.best`; None without
    ground truth)."""
    precision = ev.eval["precision"]  # [T IoUs, R recalls, K classes, A areas, M max dets]
    curves = ev.confidence_curves
    best = curves.best()
    rows = []
    for k, cat in enumerate(ev.params.catIds):
        p_k, r_k = curves.precision[k, best], curves.recall[k, best]
        rows.append({
            "class": names.get(cat, str(cat)),
            "category_id": int(cat),
            "images": ev.gt_images.get(cat, 0),
            "P": None if np.isnan(p_k) else float(p_k),
            "R": None if np.isnan(r_k) else float(r_k),
            "AP": _mean_valid(precision[:, :, k, 0, -1]),
            "AP50": _mean_valid(precision[0, :, k, 0, -1]),
            "APs": _mean_valid(precision[:, :, k, 1, -1]),
            "APm": _mean_valid(precision[:, :, k, 2, -1]),
            "APl": _mean_valid(precision[:, :, k, 3, -1]),
            "objects": ev.gt_counts.get(cat, 0),
        })
    return rows

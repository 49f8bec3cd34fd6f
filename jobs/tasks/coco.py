"""COCO detection: the val2017 reader, the YOLO families, COCO mAP (pycocotools), the
per-class table, and the report's PR curves, per-class AP and example images."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rayinfer.actors.families.detection import DetectionOptions
from rayinfer.datasets.base import ModelFamily, Dataset, SetupError
from rayinfer.datasets.cocoeval import ENGINES, CocoScores
from rayinfer.datasets.detection_errors import DetectionErrors
from rayinfer.datasets.storage import Location
from rayinfer.jobs.evaluate import Evaluation, Head, SavedRun, StreamingEvaluation, select_ids
from rayinfer.jobs.report import Figure, pyplot, save_figure
from rayinfer.jobs.tasks.base import RunningMetric, Table, Task

if TYPE_CHECKING:
    from rayinfer.datasets.coco import ResultsJson

WORST_IMAGES = 6  # the report's gallery: this many of the worst images
BEST_IMAGES = 2  # and of the best
RESULTS_JSON = "coco_results.json"  # the standard results file, written beside metrics.json
SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class CocoEvaluation(Evaluation):
    #: one row per category: class, AP, AP50, APs, APm, APl, objects
    per_class: list[dict[str, Any]] = field(default_factory=list)
    #: pycocotools' arrays (precision [T, R, K, A, M], ...), None when nothing was scored
    coco_scores: CocoScores | None = None
    #: the matching at IoU 0.5 and the best-F1 confidence: confusion matrix, worst and best images
    #: (None until `detection_errors` computes it)
    errors: DetectionErrors | None = None
    #: the ground truth it was scored against (a CocoDataset; the report's galleries read it)
    ground_truth: Any = field(default=None, repr=False)
    #: computes `errors` (set by `CocoStream.finish`), on first need: only the report draws them
    matching: Callable[[], None] | None = field(default=None, repr=False)

    def detection_errors(self) -> DetectionErrors | None:
        """`errors`, computed now if they were not yet."""
        if self.errors is None and self.matching is not None:
            matching, self.matching = self.matching, None
            matching()
        return self.errors

    def explain(self) -> None:
        self.detection_errors()


class CocoStream(StreamingEvaluation):
    """COCO mAP fed a shard at a time: each shard's detections are matched as it comes
    (`StreamingCocoEval`: memory flat with the number of detections); `detection_errors` of
    what `finish` returns matches them again at the best-F1 confidence it found, for the
    confusion matrix and the galleries."""

    def __init__(self, task: CocoDetection, dataset: Any, ids: Sequence[str], engine: str,
                 exports: Path | None = None) -> None:
        self.task, self.dataset, self.ids = task, dataset, list(ids)
        self.evaluator = dataset.evaluator(self.ids, engine)
        self.head, self.rows = Head(), 0
        self._exports = exports
        self._results: tuple[Path, Any, ResultsJson] | None = None  # opened at the first shard

    def add(self, shard: int, rows: Any) -> None:
        results = self.dataset.results_array(rows)
        self.evaluator.add(results, rows.column("image_id").to_pylist())
        self.head.add(shard, rows)
        self.rows += rows.num_rows
        if self._exports is not None:
            self._open(self._exports).write(results)

    def _open(self, folder: Path) -> Any:
        from rayinfer.datasets.coco import ResultsJson

        if self._results is None:
            path = folder / f".{RESULTS_JSON}.partial"
            f = open(path, "wb")
            self._results = (path, f, ResultsJson(f))
        return self._results[2]

    def exported(self) -> dict[str, Path]:
        folder, self._exports = self._exports, None
        if folder is None and self._results is None:
            return {}
        if self._results is None:  # no shard came: the file lists no detection
            self._open(folder)
        path, f, writer = self._results
        self._results = None
        with f:
            writer.close()
            f.flush()
            os.fsync(f.fileno())
        return {RESULTS_JSON: path}

    def finish(self, tables: Callable[[], Iterator[Any]]) -> CocoEvaluation:
        scores = self.evaluator.finish()
        # nothing to score: the metrics say 0, as for no results
        ev = self.task._evaluation(self.dataset, scores if scores.detections else None, self.evaluator.params.imgIds,
                                   scores.detections, self.head.table(), self.rows, self.ids)

        def errors() -> None:  # at the confidence the evaluation chose: a second reading of `tables()`
            ev.errors = self.task._errors(self.dataset, ev)
            for table in tables():
                self.dataset.add_errors(ev.errors, self.dataset.results_array(table),
                                        table.column("image_id").to_pylist())

        ev.ground_truth, ev.matching = self.dataset, errors
        return ev


class DetectionsPerImage(RunningMetric):
    """Detections per image so far (a running AP would need COCOeval)."""

    def __init__(self) -> None:
        self.detections, self.images = 0, 0

    def add(self, rows: Any) -> None:
        self.detections += sum(len(v) for v in rows.column("score").to_pylist())
        self.images += rows.num_rows

    def text(self) -> str:
        return f"det/img {self.detections / self.images:.1f}" if self.images else ""


class CocoDetection(Task):
    name = "coco"
    options_key = "detection"
    options_type = DetectionOptions
    engines = ENGINES
    summary_keys = SUMMARY
    headline_keys = ("AP", "AP50", "P", "R")
    layout = ("annotations",)
    figure_names = ("confusion_matrix.png", "confidence_curves.png", "pr_curves.png", "per_class_ap.png",
                    "worst_images.jpg", "best_images.jpg")
    demo_model = Path(__file__).resolve().parent.parent / "demo_models" / "detector.onnx"

    def dataset(self, cfg: Any) -> Dataset:
        from rayinfer.datasets.coco import CocoDataset

        ids = [int(i) for i in cfg.sample_ids] if cfg.sample_ids else None
        return CocoDataset(cfg.data_root, image_ids=ids, limit=cfg.limit, max_pixels=cfg.max_image_pixels,
                           storage_options=cfg.storage_options)

    def family(self, cfg: Any, dataset: Any, model: Any) -> ModelFamily:
        from rayinfer.actors.families import check_options, choose_family
        from rayinfer.actors.families.detection import image_input_size

        image_input_size(model.inputs)  # a model that does not take an image fails here, saying so
        metadata = getattr(model, "metadata", None) or {}
        family = choose_family(cfg.model_family, model.inputs, model.outputs, metadata)
        check_options(family, cfg.options)
        classes = family.num_classes(model.outputs, metadata)
        if classes is not None and classes != len(dataset.category_ids):
            raise SetupError(f"the model predicts {classes} classes but the dataset has "
                             f"{len(dataset.category_ids)} categories")
        return family(model.inputs, self.options(cfg), dataset.category_ids, metadata, model.outputs)

    def running_metric(self) -> RunningMetric:
        return DetectionsPerImage()

    def streaming_evaluation(self, dataset: Any, ids: Sequence[str], options: Any, engine: str | None = None,
                             exports: Path | None = None) -> CocoStream:
        return CocoStream(self, dataset, ids, engine or ENGINES[0], exports)

    def evaluate(self, run: SavedRun, data_root: Location, options: Any, engine: str | None = None) -> CocoEvaluation:
        from rayinfer.datasets.coco import CocoDataset

        dataset = CocoDataset(data_root)
        known = set(dataset.coco.getImgIds())
        run = run.missing(lambda i: int(i) in known, str(dataset.annotations))
        stream = self.streaming_evaluation(dataset, run.ids, options, engine)
        for shard, table in enumerate(run.tables()):
            stream.add(shard, table)
        ev = stream.finish(run.tables)
        return ev

    @staticmethod
    def _errors(dataset: Any, ev: CocoEvaluation) -> DetectionErrors:
        confidence = ev.metrics.get("best_f1_confidence")
        return DetectionErrors(len(dataset.category_ids), iou=0.5, confidence=0.25 if confidence is None else confidence,
                               keep=WORST_IMAGES)

    def evaluate_file(self, path: Path, data_root: Location, sample_ids: Any, limit: int | None,
                      options: Any, engine: str | None = None) -> CocoEvaluation:
        """A COCO results JSON of any tool (e.g. Ultralytics `save_json`), on the same evaluator."""
        from rayinfer.datasets.coco import CocoDataset, results_to_array

        if path.suffix != ".json":
            raise SetupError(f"{path}: expected a rayinfer output folder or a COCO results .json")
        dataset = CocoDataset(data_root)
        results = results_to_array(_load_results_json(path))
        ids = select_ids([str(i) for i in sorted(dataset.coco.getImgIds())], sample_ids, limit)
        scores, evaluated, n = dataset.cocoeval(results, ids, engine or ENGINES[0])  # only the results of `ids` count
        ev = self._evaluation(dataset, scores, evaluated, n, None, n, ids)
        ev.errors = self._errors(dataset, ev)
        dataset.add_errors(ev.errors, results, [int(i) for i in evaluated])
        ev.ground_truth = dataset
        return ev

    def _evaluation(self, dataset: Any, scores: CocoScores | None, evaluated: list[int], n: int,
                    head: Any, rows: int, ids: list[str]) -> CocoEvaluation:
        from rayinfer.datasets.coco import coco_metrics, per_class_table

        per_class = per_class_table(scores, dataset.category_names) if scores is not None else []
        metrics = coco_metrics(scores, evaluated, n, per_class)
        # which ground truth these numbers are against, by content (`rayinfer eval` compares it with
        # the run's; the same file read from a folder or a bucket is the same ground truth)
        metrics["annotations_sha256"] = dataset.annotations.sha256()
        return CocoEvaluation(self.name, metrics, head=head, rows=rows, sample_ids=ids, per_class=per_class,
                              coco_scores=scores)

    def tables(self, ev: Any, everything: bool = False) -> list[Table]:
        """`yolo val`'s table: all classes, then each class with objects (`everything`: each
        class), in class order (the report sorts it by AP); P and R at IoU 0.5 at the
        confidence of the best mean F1, stated in the title."""
        if not ev.per_class:
            return []
        m = ev.metrics
        rows = [["all", m["images"], sum(r["objects"] for r in ev.per_class), m["P"], m["R"], m["AP50"], m["AP"]]]
        rows += [[r["class"], r["images"], r["objects"], r["P"], r["R"], r["AP50"], r["AP"]]
                 for r in ev.per_class if everything or r["objects"]]
        return [Table(f"Per class (P, R at IoU 0.5, confidence {m['best_f1_confidence'] or 0:.3f}: the best mean F1)",
                      ["class", "images", "instances", "P", "R", "AP50", "AP50-95"], rows, sort_by="AP50-95", pinned=1)]

    def figures(self, ev: Any, data_root: Location, folder: Path, options: Any) -> list[Any]:
        """The confusion matrix and the galleries (the matching at the best-F1 confidence,
        `detection_errors`), the curves, AP per class: as jobs the report draws in parallel.
        What they read (the matching, the gallery's images) is read here; the jobs only draw."""
        from rayinfer.datasets.coco import CocoDataset

        jobs: list[Any] = []
        errors = ev.detection_errors() if ev.per_class else None
        if errors is not None:
            names = [r["class"] for r in ev.per_class]
            jobs.append(lambda: _confusion_figure(errors, names, folder))
        if ev.coco_scores is not None:
            jobs.append(lambda: [_confidence_figure(ev, folder), _pr_figure(ev.coco_scores, folder)])
        rows = [r for r in ev.per_class if r["AP"] is not None]
        if rows:
            jobs.append(lambda: _per_class_figure(rows, folder))
        if errors is not None:
            dataset = ev.ground_truth or CocoDataset(data_root)
            at = f"IoU >= {errors.iou:g}, score >= {errors.confidence:.3f}"
            worst = _loaded(dataset, errors.worst())
            if worst:
                jobs.append(lambda: save_figure(
                    _gallery(dataset, worst, f"The {len(worst)} images with the most errors ({at})"), folder,
                    "worst_images.jpg",
                    f"The images with the most errors at {at} (the confidence of the best mean F1), worst first: "
                    "ground truth solid (green: found, orange: missed), predictions dashed (blue: correct, red: "
                    "false positive); G and P tags match the list beside each image, which says what each box is.",
                    dpi=80))
            best = _loaded(dataset, errors.best()[:BEST_IMAGES])
            if best:
                jobs.append(lambda: save_figure(
                    _gallery(dataset, best, f"For contrast: images the model got right ({at})"), folder,
                    "best_images.jpg",
                    "For contrast: images with the most objects where every object was found and no prediction "
                    "was wrong, drawn as above.", dpi=80))
        return jobs

    def compare_figures(self, a: Any, b: Any, runs: tuple[SavedRun, SavedRun], data_root: Location, folder: Path,
                        labels: tuple[str, str]) -> list[Figure]:
        """AP per class, B - A, sorted; the images whose errors changed most, A beside B."""
        from rayinfer.datasets.coco import CocoDataset

        plt = pyplot()
        figures = []
        ap_a = {r["class"]: r["AP"] for r in a.per_class if r["objects"] and r["AP"] is not None}
        ap_b = {r["class"]: r["AP"] for r in b.per_class if r["objects"] and r["AP"] is not None}
        deltas = sorted((ap_b[c] - ap_a[c], c) for c in ap_a if c in ap_b)
        if deltas:
            fig, ax = plt.subplots(figsize=(7, max(2.5, 0.16 * len(deltas) + 1)))
            ax.barh([c for _, c in deltas], [d for d, _ in deltas],
                    color=["#cc3311" if d < 0 else "#4477aa" for d, _ in deltas])
            ax.axvline(0, color="#444", lw=0.8)
            ax.set(xlabel=f"AP50-95, {labels[1]} - {labels[0]}", title="Per-class AP change")
            ax.tick_params(axis="y", labelsize=7)
            figures.append(save_figure(fig, folder, "ap_deltas.png",
                                       f"AP50-95 per class, {labels[1]} minus {labels[0]}, sorted: blue bars are "
                                       f"classes {labels[1]} does better on, red worse."))
        if a.detection_errors() is not None and b.detection_errors() is not None:
            before = {i: fp + missed for i, _, fp, missed in a.errors.images}
            after = {i: fp + missed for i, _, fp, missed in b.errors.images}
            changed = sorted((i for i in before if i in after and before[i] != after[i]),
                             key=lambda i: (-abs(after[i] - before[i]), i))[:WORST_IMAGES]
            if changed:
                dataset = CocoDataset(data_root)
                drawn = []
                for ev, run in zip((a, b), runs):
                    errors = DetectionErrors(len(dataset.category_ids), ev.errors.iou, ev.errors.confidence, keep=0)
                    chosen = SavedRun.open(run.path, sample_ids=[str(i) for i in changed], record=run.record)
                    found = {im.image_id: im for table in chosen.tables()
                             for im in dataset.add_errors(errors, dataset.results_array(table),
                                                          table.column("image_id").to_pylist(), collect=True)}
                    drawn.append(found)
                pairs = [(drawn[0][i], drawn[1][i]) for i in changed if i in drawn[0] and i in drawn[1]]
                if pairs:
                    figures.append(save_figure(
                        _pairs(dataset, pairs, labels), folder,
                        "changed_images.jpg",
                        f"The images whose error count (missed + false positives, each run at its own best-F1 "
                        f"confidence) changed most between {labels[0]} (left) and {labels[1]} (right), drawn as in "
                        "the report: ground truth solid (green found, orange missed), predictions dashed (blue "
                        "correct, red false positive).", dpi=80))
        return figures

    def write_demo(self, dest: Path) -> None:
        from rayinfer.datasets.synthetic import write_coco

        write_coco(dest, n_images=48, seed=0)  # the demo model was trained on other seeds


TASK = CocoDetection()


def _load_results_json(path: Path) -> list[dict[str, Any]]:
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SetupError(f"{path}: not a JSON results file ({exc})") from None
    if not isinstance(results, list) or (results and not {"image_id", "bbox", "score", "category_id"} <= set(results[0])):
        raise SetupError(f"{path}: expected COCO results: a list of {{image_id, category_id, bbox, score}}")
    return results


# -- figures ---------------------------------------------------------------------------------
def _confusion_figure(errors: DetectionErrors, names: list[str], folder: Path) -> Figure:
    """Classes that occur (as an object or a prediction) plus background, columns normalised."""
    plt = pyplot()
    present = np.nonzero(errors.matrix[:-1].sum(axis=1) + errors.matrix[:, :-1].sum(axis=0))[0].tolist()
    keep = [*present, len(names)]
    m = errors.normalized()[np.ix_(keep, keep)]
    labels = [names[i] for i in present] + ["background"]
    size = min(16.0, max(5.0, 0.2 * len(keep) + 2.5))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    shown = ax.imshow(np.where(m > 0, m, np.nan), cmap="Blues", vmin=0, vmax=1)
    small = 7 if len(keep) <= 30 else 5
    ax.set_xticks(range(len(keep)), labels, rotation=90, fontsize=small)
    ax.set_yticks(range(len(keep)), labels, fontsize=small)
    if len(keep) <= 20:
        for (r, c), v in np.ndenumerate(m):
            if v >= 0.005:
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v > 0.5 else "#222")
    ax.set(xlabel="true class", ylabel="predicted class",
           title=f"Confusion matrix (IoU >= {errors.iou:g}, score >= {errors.confidence:.3f}; each column sums to 1)")
    fig.colorbar(shown, ax=ax, fraction=0.046, label="share of the true class's objects")
    totals = errors.totals()
    return save_figure(fig, folder, "confusion_matrix.png",
                       f"Confusion matrix at IoU >= {errors.iou:g} and score >= {errors.confidence:.3f} (the "
                       f"confidence of the best mean F1): column = the true class, row = what was predicted on it, "
                       f"each column normalised; the background row is objects nothing found (missed), the background "
                       f"column predictions with no object under them. Only classes that occur are shown. Totals: "
                       f"{totals['true_positives']:,} correct, {totals['false_positives']:,} false positives, "
                       f"{totals['missed']:,} missed objects.")


def _confidence_figure(ev: CocoEvaluation, folder: Path) -> Figure:
    plt = pyplot()
    curves = ev.coco_scores.confidence_curves  # type: ignore[union-attr]
    valid = ~np.isnan(curves.precision).all(axis=1)
    best = curves.best()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    conf = curves.confidence
    for values, label, colour in ((curves.precision[valid], "precision", "#4477aa"),
                                  (curves.recall[valid], "recall", "#228833"),
                                  (curves.f1()[valid], "F1", "#cc3311")):
        ax.plot(conf, values.mean(axis=0), label=label, color=colour, lw=1.6)
    f1 = float(curves.f1()[valid].mean(axis=0)[best]) if valid.any() else 0.0
    ax.axvline(conf[best], color="#555", ls=":", lw=1)
    ax.annotate(f"best F1 {f1:.3f} at {conf[best]:.3f}", (conf[best], f1), xytext=(8, 8), textcoords="offset points",
                fontsize=8)
    ax.set(xlabel="confidence threshold", ylabel="mean over classes with objects", xlim=(0, 1), ylim=(0, 1.02),
           title="Precision, recall and F1 against confidence (IoU 0.5)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, folder, "confidence_curves.png",
                       "Precision, recall and F1 of the predictions scoring at least each confidence, at IoU 0.5, "
                       "averaged over the classes with objects. The dotted line is the confidence of the best mean "
                       "F1 (the curve smoothed as Ultralytics' val does): the operating point of the P and R in the "
                       "metrics, the confusion matrix and the image galleries.")


def _pr_figure(scores: CocoScores, folder: Path) -> Figure:
    plt = pyplot()
    precision = scores.eval["precision"][:, :, :, 0, -1]  # [T, R, K], all areas, 100 dets
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t, iou in enumerate(scores.params.iouThrs):
        curve = np.array([row[row > -1].mean() if (row > -1).any() else np.nan for row in precision[t]])
        ax.plot(scores.params.recThrs, curve, label=f"IoU {iou:.2f}", lw=1.2)
    ax.set(xlabel="recall", ylabel="precision (mean over classes)", xlim=(0, 1), ylim=(0, 1.02),
           title="Precision-recall per IoU threshold")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, folder, "pr_curves.png",
                       "Precision against recall (COCOeval's interpolated curves, all areas, 100 detections per "
                       "image), averaged over classes, one curve per IoU threshold: the area under each is AP at "
                       "that IoU; their mean is AP50-95.")


def _per_class_figure(rows: list[dict[str, Any]], folder: Path) -> Figure:
    plt = pyplot()
    rows = sorted(rows, key=lambda r: r["AP"])
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.16 * len(rows) + 1)))
    ax.barh([r["class"] for r in rows], [r["AP"] for r in rows], color="#4477aa", label="AP50-95")
    ax.scatter([r["AP50"] for r in rows], [r["class"] for r in rows], color="#cc3311", s=8, zorder=3, label="AP50")
    ax.set(xlabel="AP", xlim=(0, 1), title="AP per class (classes with objects)")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, folder, "per_class_ap.png",
                       "AP per class, worst at the bottom: bars AP50-95, dots AP50. Classes without objects in "
                       "the evaluated images are left out.")


GT_FOUND, GT_MISSED, PRED_OK, PRED_WRONG = "#228833", "#ee7733", "#4477aa", "#cc3311"


def _read_rgb(dataset: Any, image_id: int) -> tuple[np.ndarray | None, tuple[int, int]]:
    """The image's pixels (RGB; None where it cannot be read) and its (height, width)."""
    import cv2

    from rayinfer.datasets.base import SampleError

    sample = dataset.sample(image_id)
    try:
        pixels = cv2.cvtColor(dataset.load(sample), cv2.COLOR_BGR2RGB)
    except SampleError:
        return None, (sample.info["height"], sample.info["width"])
    return pixels, pixels.shape[:2]


def _draw(ax: Any, dataset: Any, im: Any, pixels: np.ndarray | None) -> list[tuple[str, str]]:
    """Draw image `im` (an ImageErrors) with its ground truth (solid, tagged G1..) and its
    predictions (dashed, tagged P1..); returns (text, colour) per tag, errors first."""
    plt = pyplot()
    names, cats, coco = dataset.category_names, dataset.category_ids, dataset.coco
    ax.axis("off")
    if pixels is not None:
        ax.imshow(pixels)
    else:  # unreadable now: the boxes on a blank canvas of the image's size
        info = coco.loadImgs([im.image_id])[0]
        ax.set(xlim=(0, info["width"]), ylim=(info["height"], 0), aspect="equal")
        ax.text(0.5, 0.5, "image unreadable", transform=ax.transAxes, ha="center", color="#888")
    pos = coco._positions([im.image_id], ())
    crowd = coco.ann_crowd[pos].astype(bool)
    lines: list[tuple[int, str, str]] = []  # (order, text, colour)
    for i, ((x, y, w, h), cat, found) in enumerate(zip(coco.ann_bbox[pos][~crowd], coco.ann_category[pos][~crowd],
                                                        im.found), 1):
        colour = GT_FOUND if found else GT_MISSED
        ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, ec=colour, lw=1.4 if found else 2.0))
        ax.text(x + 1, y + 1, f"G{i}", color="white", fontsize=6, va="top",
                bbox={"facecolor": colour, "alpha": 0.85, "pad": 0.8, "lw": 0})
        lines.append((2 if found else 0, f"G{i} {'found' if found else 'missed'}: {names.get(int(cat), cat)}", colour))
    for i, ((x, y, w, h), score, k, ok) in enumerate(zip(im.boxes, im.scores, im.classes, im.ok), 1):
        colour = PRED_OK if ok else PRED_WRONG
        ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, ec=colour, lw=1.2 if ok else 1.8, ls="--"))
        ax.text(x + w - 1, y + h - 1, f"P{i}", color="white", fontsize=6, ha="right", va="bottom",
                bbox={"facecolor": colour, "alpha": 0.85, "pad": 0.8, "lw": 0})
        label = names.get(cats[int(k)], str(k))
        lines.append((3 if ok else 1, f"P{i} {'correct' if ok else 'false positive'}: {label} {score:.2f}", colour))
    lines.sort(key=lambda t: t[0])
    return [(text, colour) for _, text, colour in lines]


def _counts(im: Any) -> str:
    return f"{im.missed} missed, {im.false_positives} false positives, {im.objects} objects"


def _loaded(dataset: Any, images: list[Any]) -> list[tuple[Any, np.ndarray | None, tuple[int, int]]]:
    """(image, its pixels, its height and width) for a gallery: only these images are read."""
    return [(im, *_read_rgb(dataset, im.image_id)) for im in images]


def _gallery(dataset: Any, loaded: list[tuple[Any, np.ndarray | None, tuple[int, int]]], title: str) -> Any:
    """One row per image (`_loaded`): the image with its boxes, and beside it the list of
    what each tag is, errors first."""
    plt = pyplot()
    heights = [min(7.0, max(3.6, 7.0 * h / w)) for _, _, (h, w) in loaded]
    fig, axes = plt.subplots(len(loaded), 2, figsize=(11.5, sum(heights) + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [7, 3.2], "height_ratios": heights})
    for (im, pixels, _), (ax, side), height in zip(loaded, axes, heights):
        lines = _draw(ax, dataset, im, pixels)
        ax.set_title(f"image {im.image_id}: {_counts(im)}", fontsize=9, loc="left")
        side.axis("off")
        room = int(height / 0.16)  # lines of 7.5 pt that fit beside the image
        for j, (text, colour) in enumerate(lines[:room]):
            side.text(0, 1 - j / room, text, color=colour, fontsize=7.5, va="top", transform=side.transAxes)
        if len(lines) > room:
            side.text(0, -0.02, f"... and {len(lines) - room} more", fontsize=7.5, va="top", transform=side.transAxes)
    fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (sum(heights) + 0.6)))  # room for the title
    return fig


def _pairs(dataset: Any, pairs: list[tuple[Any, Any]], labels: tuple[str, str]) -> Any:
    """One row per image: run A's boxes on the left, run B's on the right."""
    plt = pyplot()
    loaded = [(a, b, *_read_rgb(dataset, a.image_id)) for a, b in pairs]
    heights = [min(5.0, max(2.6, 5.5 * h / w)) for _, _, _, (h, w) in loaded]
    fig, axes = plt.subplots(len(pairs), 2, figsize=(11.5, sum(heights) + 0.6), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for (a, b, pixels, _), row in zip(loaded, axes):
        for ax, im, label in zip(row, (a, b), labels):
            _draw(ax, dataset, im, pixels)
            ax.set_title(f"{label} · image {im.image_id}: {_counts(im)}", fontsize=9, loc="left")
    fig.tight_layout()
    return fig

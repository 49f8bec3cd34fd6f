"""COCO detection: the val2017 reader, the YOLO families, COCO mAP (pycocotools), the
per-class table, and the report's PR curves, per-class AP and example images."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayinfer.actors.families.detection import DetectionOptions
from rayinfer.datasets.base import Adapter, Dataset, SetupError
from rayinfer.datasets.cocoeval import CocoScores
from rayinfer.datasets.storage import Location
from rayinfer.jobs.evaluate import Evaluation, SavedRun, head_rows, select_ids
from rayinfer.jobs.report import pyplot, save_png
from rayinfer.jobs.tasks.base import RunningMetric, Table, Task

SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class CocoEvaluation(Evaluation):
    #: one row per category: class, AP, AP50, APs, APm, APl, objects
    per_class: list[dict[str, Any]] = field(default_factory=list)
    #: pycocotools' arrays (precision [T, R, K, A, M], ...), None when nothing was scored
    coco_scores: CocoScores | None = None


class DetectionsPerImage(RunningMetric):
    """Detections per image so far (a running AP would need COCOeval)."""

    def __init__(self) -> None:
        self.detections, self.images = 0, 0

    def add(self, records: Any) -> None:
        self.detections += sum(len(v) for v in records.column("score").to_pylist())
        self.images += records.num_rows

    def text(self) -> str:
        return f"det/img {self.detections / self.images:.1f}" if self.images else ""


class CocoDetection(Task):
    name = "coco"
    options_key = "detection"
    options_type = DetectionOptions
    summary_keys = SUMMARY
    figure_names = ("pr_curves", "per_class_ap", "detections")
    demo_model = Path(__file__).resolve().parent.parent / "demo_models" / "detector.onnx"

    def dataset(self, cfg: Any) -> Dataset:
        from rayinfer.datasets.coco import CocoDataset

        ids = [int(i) for i in cfg.sample_ids] if cfg.sample_ids else None
        return CocoDataset(cfg.data_root, image_ids=ids, limit=cfg.limit, max_pixels=cfg.max_image_pixels,
                           storage_options=cfg.storage_options)

    def adapter(self, cfg: Any, dataset: Any, model: Any) -> Adapter:
        from rayinfer.actors.families import choose_family
        from rayinfer.actors.families.detection import image_input_size

        image_input_size(model.inputs)  # a model that does not take an image fails here, saying so
        family = choose_family(cfg.model_family, model.inputs, model.outputs)
        classes = family.num_classes(model.outputs)
        if classes is not None and classes != len(dataset.category_ids):
            raise SetupError(f"the model predicts {classes} classes but the dataset has "
                             f"{len(dataset.category_ids)} categories")
        return family(model.inputs, cfg.detection, dataset.category_ids)

    def running_metric(self) -> RunningMetric:
        return DetectionsPerImage()

    def evaluate(self, run: SavedRun, data_root: Location, options: Any) -> CocoEvaluation:
        # Shard by shard into the evaluator's compact arrays: memory stays flat with the
        # number of detections (datasets/cocoeval.py).
        from rayinfer.datasets.coco import CocoDataset

        dataset = CocoDataset(data_root)
        evaluator = dataset.evaluator(run.ids)
        head, rows = None, 0
        for table in run.tables():
            evaluator.add(dataset.results_array(table), table.column("image_id").to_pylist())
            head = head_rows(head, table)
            rows += table.num_rows
        scores = evaluator.finish()
        # nothing to score: the metrics say 0, as for no results
        return self._evaluation(dataset, scores if scores.detections else None, evaluator.params.imgIds,
                                scores.detections, head, rows, run.ids)

    def evaluate_file(self, path: Path, data_root: Location, sample_ids: Any, limit: int | None,
                      options: Any) -> CocoEvaluation:
        """A COCO results JSON of any tool (e.g. Ultralytics `save_json`), on the same evaluator."""
        from rayinfer.datasets.coco import CocoDataset, results_to_array

        if path.suffix != ".json":
            raise SetupError(f"{path}: expected a rayinfer output folder or a COCO results .json")
        dataset = CocoDataset(data_root)
        results = results_to_array(_load_results_json(path))
        ids = select_ids([str(i) for i in sorted(dataset.coco.getImgIds())], sample_ids, limit)
        scores, evaluated, n = dataset.cocoeval(results, ids)  # only the results of `ids` count
        return self._evaluation(dataset, scores, evaluated, n, None, n, ids)

    def _evaluation(self, dataset: Any, scores: CocoScores | None, evaluated: list[int], n: int,
                    head: Any, rows: int, ids: list[str]) -> CocoEvaluation:
        from rayinfer.datasets.coco import coco_metrics, per_class_table

        per_class = per_class_table(scores, dataset.category_names) if scores is not None else []
        metrics = coco_metrics(scores, evaluated, n, per_class)
        return CocoEvaluation(self.name, metrics, head=head, rows=rows, sample_ids=ids, per_class=per_class,
                              coco_scores=scores)

    def tables(self, ev: Any, everything: bool = False) -> list[Table]:
        """`yolo val`'s table: all classes, then each class with objects (`everything`: each
        class); P and R at IoU 0.5 at the confidence of the best mean F1, stated in the title."""
        if not ev.per_class:
            return []
        m = ev.metrics
        rows = [["all", m["images"], sum(r["objects"] for r in ev.per_class), m["P"], m["R"], m["AP50"], m["AP"]]]
        rows += [[r["class"], r["images"], r["objects"], r["P"], r["R"], r["AP50"], r["AP"]]
                 for r in ev.per_class if everything or r["objects"]]
        return [Table(f"Per class (P, R at IoU 0.5, confidence {m['best_f1_confidence']:.3f}: the best mean F1)",
                      ["class", "images", "instances", "P", "R", "AP50", "AP50-95"], rows)]

    def figures(self, ev: Any, data_root: Location, folder: Path, options: Any, n_images: int = 6
                ) -> list[tuple[str, bytes]]:
        plt = pyplot()
        figures = []
        coco_eval = ev.coco_scores
        if coco_eval is not None:
            precision = coco_eval.eval["precision"][:, :, :, 0, -1]  # [T, R, K], all areas, 100 dets
            recall = coco_eval.params.recThrs
            fig, ax = plt.subplots(figsize=(6.5, 4.5))
            for t, iou in enumerate(coco_eval.params.iouThrs):
                p = precision[t]
                curve = np.array([row[row > -1].mean() if (row > -1).any() else np.nan for row in p])
                ax.plot(recall, curve, label=f"IoU {iou:.2f}", lw=1.2)
            ax.set(xlabel="recall", ylabel="precision (mean over classes)", xlim=(0, 1), ylim=(0, 1.02),
                   title="Precision-recall per IoU threshold")
            ax.legend(fontsize=7, ncol=2)
            figures.append(("pr_curves", save_png(fig, folder, "pr_curves")))
        rows = [r for r in ev.per_class if r["AP"] is not None]
        if rows:
            rows.sort(key=lambda r: r["AP"])
            fig, ax = plt.subplots(figsize=(6.5, max(2.5, 0.18 * len(rows) + 1)))
            ax.barh([r["class"] for r in rows], [r["AP"] for r in rows], color="#4477aa")
            ax.set(xlabel="AP@[.5:.95]", xlim=(0, 1), title="AP per class")
            ax.tick_params(axis="y", labelsize=7)
            figures.append(("per_class_ap", save_png(fig, folder, "per_class_ap")))
        if ev.head is not None and ev.head.num_rows:
            figures.append(("detections", save_png(_detection_grid(ev, data_root, n_images), folder, "detections")))
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


def _detection_grid(ev: CocoEvaluation, data_root: Location, n_images: int) -> Any:
    import cv2

    from rayinfer.datasets.base import Sample, SampleError
    from rayinfer.datasets.coco import CocoDataset

    plt = pyplot()
    dataset = CocoDataset(data_root)
    rows = ev.head.slice(0, n_images).to_pylist()  # type: ignore[union-attr]
    cols = min(3, len(rows))
    fig, axes = plt.subplots(-(-len(rows) // cols), cols, figsize=(4 * cols, 3.2 * -(-len(rows) // cols)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, row in zip(axes.ravel(), rows):
        try:
            image = dataset.load(Sample(str(row["image_id"]), row["file"]))
        except SampleError:
            continue
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        ax.imshow(image)
        for ann in dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=[row["image_id"]], iscrowd=None)):
            x, y, w, h = ann["bbox"]
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, ec="#22cc44", lw=1.5))
        for (x, y, w, h), score, cat in zip(row["bbox"], row["score"], row["category_id"]):
            if score < 0.3:
                continue
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, ec="#ee3322", lw=1.0, ls="--"))
            ax.text(x, y, f"{dataset.category_names.get(cat, cat)} {score:.2f}", color="white", fontsize=6,
                    bbox={"facecolor": "#ee3322", "alpha": 0.7, "pad": 1, "lw": 0})
        ax.set_title(f"image {row['image_id']}", fontsize=8)
    fig.suptitle("ground truth (green) vs predictions with score >= 0.3 (red)", fontsize=9)
    return fig

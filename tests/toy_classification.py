"""A toy task, as a user would add one: image classification with top-1 accuracy.

This module is the whole task (reader, family, evaluation, progress figure, table and
report figure); registering it is one line (`REGISTRY["toy"] = "tests.toy_classification:TASK"`).
Data: DATA_ROOT/labels.json ({"sample id": class index}) and DATA_ROOT/images/ID.npy
(uint8 H x W x 3). Model: any ONNX model taking [1, 3, H, W] float32 in [0, 1] and giving
[1, classes] scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from rayinfer.datasets.base import Sample, SampleError, safe_join
from rayinfer.jobs.evaluate import Evaluation, SavedRun
from rayinfer.jobs.report import Figure, pyplot, save_figure
from rayinfer.jobs.tasks import RunningMetric, Table, Task

CLASSES = ("red", "green", "blue")


class ToyDataset:
    name = "toy"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def labels(self) -> dict[str, int]:
        return json.loads((self.root / "labels.json").read_text())

    def samples(self) -> list[Sample]:
        return [Sample(i, f"images/{i}.npy") for i in sorted(self.labels())]

    def load(self, sample: Sample) -> np.ndarray:
        try:
            return np.load(safe_join(self.root, sample.file))
        except (OSError, ValueError) as exc:
            raise SampleError(f"{sample.file}: {exc}") from None

    def fingerprint(self) -> dict[str, Any]:
        return {"dataset": self.name, "labels": self.labels()}

    def exports(self, tables: Callable[[], Iterable[pa.Table]]) -> dict[str, Any]:
        return {}

    def evaluate(self, predictions: pa.Table, sample_ids: Sequence[str] | None = None) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class ToyOptions:
    """The task's options: each field is a flag of `rayinfer run toy` (`--top-k 3`) and, marked
    "eval", of `rayinfer eval toy`; nothing else in the project lists them."""

    top_k: int = field(default=1, metadata={"help": "a sample is right when its class is among its k best scores",
                                            "eval": True})

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= len(CLASSES):
            raise ValueError(f"top_k must be in 1..{len(CLASSES)}, got {self.top_k}")


class ToyFamily:
    schema = pa.schema([pa.field("predicted", pa.int32()), pa.field("score", pa.float32()),
                        pa.field("ranked", pa.list_(pa.int32()))])

    def __init__(self, input_name: str) -> None:
        self.input_name = input_name

    def preprocess(self, raw: np.ndarray, sample: Sample) -> tuple[dict[str, np.ndarray], None]:
        return {self.input_name: (raw.transpose(2, 0, 1)[None] / 255.0).astype(np.float32)}, None

    def postprocess(self, outputs: Sequence[np.ndarray], meta: Any, sample: Sample) -> dict[str, Any]:
        scores = outputs[0][0]
        return {"predicted": int(scores.argmax()), "score": float(scores.max()),
                "ranked": [int(k) for k in np.argsort(-scores, kind="stable")]}


@dataclass
class ClassificationEvaluation(Evaluation):
    confusion: list[list[int]] = field(default_factory=list)  # [true class][predicted class]


class MeanScore(RunningMetric):
    def __init__(self) -> None:
        self.total, self.n = 0.0, 0

    def add(self, records: pa.Table) -> None:
        self.total += sum(records.column("score").to_pylist())
        self.n += records.num_rows

    def text(self) -> str:
        return f"score {self.total / self.n:.3f}" if self.n else ""


class Classification(Task):
    name = "toy"
    options_type = ToyOptions
    summary_keys = ("top1", "images")
    figure_names = ("confusion.png",)

    def dataset(self, cfg: Any) -> ToyDataset:
        return ToyDataset(cfg.data_root)

    def family(self, cfg: Any, dataset: Any, model: Any) -> ToyFamily:
        return ToyFamily(model.inputs[0].name)

    def running_metric(self) -> RunningMetric:
        return MeanScore()

    def evaluate(self, run: SavedRun, data_root: Path, options: Any, engine: str | None = None) -> ClassificationEvaluation:
        options = options or self.saved_options(run) or ToyOptions()
        labels = ToyDataset(data_root).labels()
        table = run.table()
        ids = table.column("sample_id").to_pylist()
        predicted = dict(zip(ids, table.column("predicted").to_pylist()))
        ranked = dict(zip(ids, table.column("ranked").to_pylist()))
        confusion = [[0] * len(CLASSES) for _ in CLASSES]
        for sample_id in run.ids:
            if sample_id in predicted:
                confusion[labels[sample_id]][predicted[sample_id]] += 1
        correct = sum(labels[i] in ranked[i][:options.top_k] for i in run.ids if i in ranked)
        # failed samples count as wrong
        metrics = {f"top{options.top_k}": correct / len(run.ids), "images": len(run.ids)}
        return ClassificationEvaluation(self.name, metrics, head=table.slice(0, 16), rows=table.num_rows,
                                        sample_ids=run.ids, confusion=confusion)

    def tables(self, ev: Any, everything: bool = False) -> list[Table]:
        return [Table("Per class", ["class", "images", "top1"],
                      [[name, sum(row), row[k] / sum(row) if sum(row) else None]
                       for k, (name, row) in enumerate(zip(CLASSES, ev.confusion))])]

    def figures(self, ev: Any, data_root: Path, folder: Path, options: Any) -> list[Figure]:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(3.5, 3))
        ax.imshow(np.array(ev.confusion), cmap="Blues")
        ax.set(xticks=range(3), yticks=range(3), xticklabels=CLASSES, yticklabels=CLASSES,
               xlabel="predicted", ylabel="true", title="Confusion")
        return [save_figure(fig, folder, "confusion.png", "Confusion: rows the true class, columns the predicted one.")]


TASK = Classification()

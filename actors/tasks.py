"""Which dataset reader pairs with which model family, for a job's config.

The actor (which builds them again after a restart) and the driver call these two
functions. `cfg` is a `jobs.config.JobConfig`; this layer reads its fields and does not
import it (layers point down: jobs -> actors -> datasets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rayinfer.actors.model import Model
from rayinfer.datasets.base import Adapter, Dataset, SetupError


def build_dataset(cfg: Any) -> Dataset:
    """The dataset reader for `cfg.task` (cheap: annotations load on first use)."""
    root = Path(cfg.data_root)
    if not root.is_dir():
        raise SetupError(f"data root not found: {root}")
    if cfg.task == "coco":
        from rayinfer.datasets.coco import CocoDataset

        ids = [int(i) for i in cfg.sample_ids] if cfg.sample_ids else None
        return CocoDataset(root, image_ids=ids, limit=cfg.limit, max_pixels=cfg.max_image_pixels)
    if cfg.task == "nyu":
        from rayinfer.datasets.nyu import NyuDataset

        return NyuDataset(root, sample_ids=cfg.sample_ids, limit=cfg.limit)
    if cfg.task == "null":
        from rayinfer.datasets.null import NullDataset

        return NullDataset(root, cfg.limit or 1000)
    raise SetupError(f"unknown task {cfg.task!r}")


def build_adapter(cfg: Any, dataset: Dataset, model: Model) -> Adapter:
    """The model-family adapter for this dataset, checked against the model's signature."""
    if cfg.task == "coco":
        from rayinfer.actors.yolo import FAMILIES, YoloAdapter, detect_family, image_input_size

        image_input_size(model.inputs)  # a model that does not take an image fails here, saying so
        family = detect_family(model.outputs) if cfg.model_family == "auto" else cfg.model_family
        if family not in FAMILIES:
            raise SetupError(f"--model-family {family!r} is not a detection family: {FAMILIES}")
        adapter = YoloAdapter(family, model.inputs, cfg.detection, dataset.category_ids)  # type: ignore[attr-defined]
        _check_class_count(family, model, len(dataset.category_ids))  # type: ignore[attr-defined]
        return adapter
    if cfg.task == "nyu":
        from rayinfer.actors.depth import DepthAdapter

        return DepthAdapter(model.inputs, cfg.depth, getattr(model, "metadata", None))
    if cfg.task == "null":
        from rayinfer.actors.null import NullAdapter

        return NullAdapter(model.inputs)
    raise SetupError(f"unknown task {cfg.task!r}")


def _check_class_count(family: str, model: Model, categories: int) -> None:
    shape: Any = model.outputs[0].shape
    classes = (shape[1] - 4) if family == "yolov8" else (shape[2] - 5)
    if isinstance(classes, int) and classes != categories:
        raise SetupError(
            f"the model predicts {classes} classes but the dataset has {categories} categories"
        )

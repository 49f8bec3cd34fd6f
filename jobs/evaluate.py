"""Offline evaluation: dataset accuracy from saved predictions, without Ray or the model.

`rayinfer eval coco|nyu --predictions O --data-root D` reads `O/predictions/*.parquet`
(and `O/errors.parquet`, whose samples count as misses, as in the job), so the numbers
are the job's to the last digit. For COCO, `--predictions` may also be a results JSON
from another tool (e.g. Ultralytics `save_json`), to compare models on one evaluator.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from datasets.base import SetupError
from jobs.config import JobConfig
from jobs.output import read_shards


@dataclass
class Evaluation:
    """Metrics plus the slices that the report and the CLI show."""

    task: str
    metrics: dict[str, Any]
    per_class: list[dict[str, Any]] = field(default_factory=list)
    depth_bins: list[dict[str, Any]] = field(default_factory=list)
    predictions: pa.Table | None = None
    cocoeval: Any = None
    sample_ids: list[str] = field(default_factory=list)


def load_run_config(output: Path) -> JobConfig | None:
    path = output / "run.json"
    if not path.is_file():
        return None
    return JobConfig.from_dict(json.loads(path.read_text())["config"])


def _select(ids: list[str], wanted: Sequence[str] | None, limit: int | None) -> list[str]:
    if wanted:
        missing = set(wanted) - set(ids)
        if missing:
            raise SetupError(f"sample ids not in the saved run: {sorted(missing)[:10]}")
        keep = set(wanted)
        ids = [i for i in ids if i in keep]
    return ids[:limit] if limit else ids


def evaluate_saved(task: str, predictions: str | Path, data_root: str | Path,
                   sample_ids: Sequence[str] | None = None, limit: int | None = None,
                   depth_options: Any = None) -> Evaluation:
    """Recompute the metrics of a saved run (a folder) or of a COCO results JSON."""
    path = Path(predictions)
    if task == "coco":
        from datasets.coco import CocoDataset, coco_metrics, per_class_table

        dataset = CocoDataset(data_root)
        if path.is_file() and path.suffix == ".json":
            results = _load_results_json(path)
            ids = [str(i) for i in sorted(dataset.coco.getImgIds())]
            ids = _select(ids, sample_ids, limit)
            keep = {int(i) for i in ids}
            results = [r for r in results if int(r["image_id"]) in keep]
            source: Any = results
            table = None
        else:
            table, ids = _saved_table(path, sample_ids, limit)
            source = table
        ev, evaluated, n = dataset.cocoeval(source, ids)  # once: the metrics and the report share it
        per_class = per_class_table(ev, dataset.category_names) if ev is not None else []
        metrics = coco_metrics(ev, evaluated, n, per_class)
        return Evaluation("coco", metrics, per_class=per_class, predictions=table, cocoeval=ev, sample_ids=ids)
    if task == "nyu":
        from datasets.nyu import NyuDataset, recompute

        table, ids = _saved_table(path, sample_ids, limit)
        cfg = load_run_config(path)
        options = depth_options or (cfg.depth if cfg else None)
        if options is None:
            raise SetupError(f"{path}/run.json is missing: pass the depth options used by the job")
        dataset = NyuDataset(data_root)
        fresh, bins = recompute(dataset, table, options)
        metrics = dataset.evaluate(fresh, ids)
        return Evaluation("nyu", metrics, depth_bins=bins, predictions=fresh, sample_ids=ids)
    if task == "null":
        from datasets.null import NullDataset

        table, ids = _saved_table(path, sample_ids, limit)
        return Evaluation("null", NullDataset(data_root, len(ids)).evaluate(table, ids), predictions=table, sample_ids=ids)
    raise SetupError(f"unknown task {task!r}")


def _saved_table(output: Path, sample_ids: Sequence[str] | None, limit: int | None) -> tuple[pa.Table, list[str]]:
    if not (output / "predictions").is_dir():
        raise SetupError(f"{output} has no predictions/ folder (is it a rayinfer output directory?)")
    table = read_shards(output / "predictions")
    if table.num_columns == 0:
        raise SetupError(f"{output}/predictions holds no shard files")
    errors = pq.read_table(output / "errors.parquet") if (output / "errors.parquet").exists() else None
    ids = table.column("sample_id").to_pylist() + (errors.column("sample_id").to_pylist() if errors else [])
    ids = _select(ids, sample_ids, limit)
    keep = pa.array(ids, pa.string())
    import pyarrow.compute as pc

    return table.filter(pc.is_in(table.column("sample_id"), value_set=keep)), ids


def _load_results_json(path: Path) -> list[dict[str, Any]]:
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SetupError(f"{path}: not a JSON results file ({exc})") from None
    if not isinstance(results, list) or (results and not {"image_id", "bbox", "score", "category_id"} <= set(results[0])):
        raise SetupError(f"{path}: expected COCO results: a list of {{image_id, category_id, bbox, score}}")
    return results


def compare(a: Path, b: Path) -> list[tuple[str, float | None, float | None, float | None]]:
    """(metric, value in a, value in b, b - a) for every scalar metric of two runs."""
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    rows = []
    for key in [k for k in ma if isinstance(ma[k], (int, float))] + [k for k in mb if k not in ma and isinstance(mb[k], (int, float))]:
        va, vb = ma.get(key), mb.get(key)
        delta = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        rows.append((key, va, vb, delta))
    return rows

"""Offline evaluation: dataset accuracy from saved predictions, without Ray or the model.

`rayinfer eval coco|nyu --predictions O --data-root D` reads `O/predictions/*.parquet`
(and `O/errors.parquet`, whose samples count as misses, as in the job), so the numbers
are the job's to the last digit. For COCO, `--predictions` may also be a results JSON
from another tool (e.g. Ultralytics `save_json`), to compare models on one evaluator.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayinfer.datasets.base import SetupError
from rayinfer.datasets.cocoeval import CocoScores
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.output import iter_shards, read_shards


@dataclass
class Evaluation:
    """Metrics plus the slices that the report and the CLI show."""

    task: str
    metrics: dict[str, Any]
    per_class: list[dict[str, Any]] = field(default_factory=list)
    depth_bins: list[dict[str, Any]] = field(default_factory=list)
    #: the whole predictions table, for tasks whose evaluation holds it (NYU: recomputed
    #: metrics; null); COCO streams its shards and keeps none
    predictions: pa.Table | None = None
    #: the first prediction rows in saved order, for the report's example images
    head: pa.Table | None = None
    #: prediction rows evaluated
    rows: int = 0
    coco_scores: CocoScores | None = None
    sample_ids: list[str] = field(default_factory=list)


#: prediction rows kept in `Evaluation.head`
HEAD_ROWS = 16


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
        from rayinfer.datasets.coco import CocoDataset, coco_metrics, per_class_table, results_to_array

        dataset = CocoDataset(data_root)
        head = None
        if path.is_file() and path.suffix == ".json":
            results = results_to_array(_load_results_json(path))
            ids = _select([str(i) for i in sorted(dataset.coco.getImgIds())], sample_ids, limit)
            ev, evaluated, n = dataset.cocoeval(results, ids)  # only the results of `ids` count
            rows = n
        else:
            # Shard by shard into the evaluator's compact arrays: memory stays flat with the
            # number of detections (datasets/cocoeval.py).
            ids = _saved_ids(path, sample_ids, limit)
            evaluator = dataset.evaluator(ids)
            rows = 0
            for table in _saved_tables(path, ids):
                evaluator.add(dataset.results_array(table), table.column("image_id").to_pylist())
                head = _head(head, table)
                rows += table.num_rows
            scores = evaluator.finish()
            evaluated, n = evaluator.params.imgIds, scores.detections
            ev = scores if n else None  # nothing to score: the metrics say 0, as for no results
        per_class = per_class_table(ev, dataset.category_names) if ev is not None else []
        metrics = coco_metrics(ev, evaluated, n, per_class)
        return Evaluation("coco", metrics, per_class=per_class, head=head, rows=rows, coco_scores=ev, sample_ids=ids)
    if task == "nyu":
        from rayinfer.datasets.nyu import NyuDataset, recompute

        ids = _saved_ids(path, sample_ids, limit)
        table = _concat(_saved_tables(path, ids))
        cfg = load_run_config(path)
        options = depth_options or (cfg.depth if cfg else None)
        if options is None:
            raise SetupError(f"{path}/run.json is missing: pass the depth options used by the job")
        dataset = NyuDataset(data_root)
        fresh, bins = recompute(dataset, table, options)
        metrics = dataset.evaluate(fresh, ids)
        return Evaluation("nyu", metrics, depth_bins=bins, predictions=fresh, head=fresh.slice(0, HEAD_ROWS),
                          rows=fresh.num_rows, sample_ids=ids)
    if task == "null":
        from rayinfer.datasets.null import NullDataset

        ids = _saved_ids(path, sample_ids, limit)
        table = _concat(_saved_tables(path, ids))
        return Evaluation("null", NullDataset(data_root, len(ids)).evaluate(table, ids), predictions=table,
                          head=table.slice(0, HEAD_ROWS), rows=table.num_rows, sample_ids=ids)
    raise SetupError(f"unknown task {task!r}")


def _saved_ids(output: Path, sample_ids: Sequence[str] | None, limit: int | None) -> list[str]:
    """The samples of a saved run (predicted, then failed), narrowed to `sample_ids` / `limit`."""
    if not (output / "predictions").is_dir():
        raise SetupError(f"{output} has no predictions/ folder (is it a rayinfer output directory?)")
    if not any((output / "predictions").glob("shard-*.parquet")):
        raise SetupError(f"{output}/predictions holds no shard files")
    ids = read_shards(output / "predictions", ["sample_id"]).column("sample_id").to_pylist()
    if (output / "errors.parquet").exists():
        ids += pq.read_table(output / "errors.parquet", columns=["sample_id"]).column("sample_id").to_pylist()
    return _select(ids, sample_ids, limit)


def _saved_tables(output: Path, ids: Sequence[str]) -> Iterator[pa.Table]:
    """The saved predictions of the samples `ids`, a shard at a time."""
    keep = pa.array(ids, pa.string())
    for table in iter_shards(output / "predictions"):
        yield table.filter(pc.is_in(table.column("sample_id"), value_set=keep))


def _concat(tables: Iterable[pa.Table]) -> pa.Table:
    return pa.concat_tables(list(tables), promote_options="default")


def _head(head: pa.Table | None, table: pa.Table) -> pa.Table:
    if head is None:
        return table.slice(0, HEAD_ROWS)
    if head.num_rows >= HEAD_ROWS:
        return head
    return pa.concat_tables([head, table.slice(0, HEAD_ROWS - head.num_rows)], promote_options="default")


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

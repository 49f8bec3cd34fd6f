"""Offline evaluation: dataset accuracy from saved predictions, without Ray or the model.

`rayinfer eval TASK --predictions O --data-root D` opens `O` as a `SavedRun` (its
`predictions/*.parquet` and `errors.parquet`, whose samples count as misses, as in the job)
and hands it to the task's `evaluate` hook (`Task.evaluate_saved`), the very call the job
makes, so the numbers are the job's to the last digit. A task may also
read another tool's results file (COCO: a results JSON, e.g. Ultralytics `save_json`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayinfer.datasets.base import SetupError
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.output import MANIFEST, iter_shards, read_shards

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Metrics, plus what the report and the CLI show. A task that has more to show (per-class
    tables, the COCO arrays) returns a subclass with those fields."""

    task: str
    #: metrics.json
    metrics: dict[str, Any]
    #: the first prediction rows in saved order, for the report's example images
    head: pa.Table | None = None
    #: prediction rows evaluated
    rows: int = 0
    sample_ids: list[str] = field(default_factory=list)

    def explain(self) -> None:
        """Compute now what only the report shows, where the task computes it on first need
        (COCO: the matching at the best-F1 confidence); the default has nothing to compute."""


#: prediction rows kept in `Evaluation.head`
HEAD_ROWS = 16


class StreamingEvaluation:
    """A task's metrics fed a run's predictions a shard at a time, in any order: the job
    feeds each shard as it commits (jobs/streaming.py), so that once the last one commits
    only `finish` is left; `rayinfer eval` feeds the saved shards. A task that has one
    returns it from `Task.streaming_evaluation`.

    Use:
        stream.add(shard, rows)     # each shard's prediction rows, once
        ev = stream.finish(tables)  # the metrics: samples never added count as missed
        stream.exported()           # the export files it wrote as the shards came, closed

    A stream made with an `exports` folder writes the task's export files (COCO:
    `coco_results.json`) there as it goes, under temporary names; `exported` closes them and
    names them, for the caller to put in place (or remove, where the stream failed).
    """

    def add(self, shard: int, rows: pa.Table) -> None:
        raise NotImplementedError

    def exported(self) -> dict[str, Path]:
        """{export name: its finished file}, closed now; {} for a stream that writes none."""
        return {}

    def finish(self, tables: Callable[[], Iterator[pa.Table]]) -> Evaluation:
        """The metrics. `tables()` reads the predictions again, shard by shard in order, for
        what the evaluation computes only when asked (`Evaluation.explain`)."""
        raise NotImplementedError


class Head:
    """The first HEAD_ROWS prediction rows in shard order, from shards added in any order
    (the lowest shards' first rows are kept, nothing more)."""

    def __init__(self) -> None:
        self._kept: dict[int, pa.Table] = {}

    def add(self, shard: int, rows: pa.Table) -> None:
        self._kept[shard] = rows.slice(0, HEAD_ROWS)
        total = 0
        for index in sorted(self._kept):
            if total >= HEAD_ROWS:
                del self._kept[index]
            else:
                total += self._kept[index].num_rows

    def table(self) -> pa.Table | None:
        head = None
        for index in sorted(self._kept):
            head = head_rows(head, self._kept[index])
        return head


def read_run_record(output: Path) -> dict[str, Any] | None:
    """A saved run's run.json, or None where it has none."""
    path = output / "run.json"
    return json.loads(path.read_text()) if path.is_file() else None


def select_ids(ids: list[str], wanted: Sequence[str] | None, limit: int | None) -> list[str]:
    if wanted:
        missing = set(wanted) - set(ids)
        if missing:
            raise SetupError(f"sample ids not in the saved run: {sorted(missing)[:10]}")
        keep = set(wanted)
        ids = [i for i in ids if i in keep]
    return ids[:limit] if limit else ids


@dataclass
class SavedRun:
    """A saved run's predictions, narrowed to the samples evaluated (`ids`: predicted, then
    failed, in saved order)."""

    path: Path
    ids: list[str]
    #: its run.json (read once), or None
    record: dict[str, Any] | None
    #: samples the ground truth lacks are dropped (with a warning) instead of refused
    ignore_missing: bool = False

    @classmethod
    def open(cls, path: Path, sample_ids: Sequence[str] | None = None, limit: int | None = None,
             record: dict[str, Any] | None = None, ignore_missing: bool = False) -> SavedRun:
        """`record`: its run.json where the caller has read it already."""
        return cls(path, _saved_ids(path, sample_ids, limit), record if record is not None else read_run_record(path),
                   ignore_missing)

    @property
    def config(self) -> JobConfig | None:
        if self.record is None:
            return None
        known = {f.name for f in fields(JobConfig)}
        # runs written before `options` kept each task's options in a top-level section
        return JobConfig.from_dict({k: v for k, v in self.record["config"].items()
                                    if k in known or not isinstance(v, dict)})

    def missing(self, known: Any, ground_truth: str) -> SavedRun:
        """This run narrowed to the samples `known(sample_id)` says the ground truth has: a
        setup error naming the others, or (`ignore_missing`) a warning saying how many went."""
        lacking = [i for i in self.ids if not known(i)]
        if not lacking:
            return self
        first = ", ".join(lacking[:5]) + (", ..." if len(lacking) > 5 else "")
        if not self.ignore_missing:
            raise SetupError(f"{len(lacking)} sample{'s' if len(lacking) > 1 else ''} of {self.path} "
                             f"{'are' if len(lacking) > 1 else 'is'} not in {ground_truth} ({first}): evaluate "
                             "against the ground truth the run was made with, or pass --ignore-missing-images")
        log.warning("%d samples of %s are not in %s (%s): left out of the evaluation (--ignore-missing-images)",
                    len(lacking), self.path, ground_truth, first)
        return dataclasses.replace(self, ids=[i for i in self.ids if known(i)])

    def tables(self) -> Iterator[pa.Table]:
        """The predictions of `ids`, a shard at a time (memory flat with the run's size)."""
        return _saved_tables(self.path, self.ids)

    def table(self) -> pa.Table:
        """All the predictions of `ids` in one table."""
        return pa.concat_tables(list(self.tables()), promote_options="default")

    def options(self) -> dict[str, Any] | None:
        """The task options the job resolved (run.json `task_options`), as plain data."""
        return self.record.get("task_options") if self.record is not None else None

    def fingerprint(self) -> dict[str, Any] | None:
        """Its manifest's fingerprint (what every shard was made under: `--resume` refuses
        another), or None where it has no readable manifest."""
        try:
            manifest = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        fingerprint = manifest.get("fingerprint") if isinstance(manifest, dict) else None
        return fingerprint if isinstance(fingerprint, dict) else None


def _saved_ids(output: Path, sample_ids: Sequence[str] | None, limit: int | None) -> list[str]:
    """The samples of a saved run (predicted, then failed), narrowed to `sample_ids` / `limit`."""
    if not (output / "predictions").is_dir():
        raise SetupError(f"{output} has no predictions/ folder (is it a rayinfer output directory?)")
    if not any((output / "predictions").glob("shard-*.parquet")):
        raise SetupError(f"{output}/predictions holds no shard files")
    ids = read_shards(output / "predictions", ["sample_id"]).column("sample_id").to_pylist()
    if (output / "errors.parquet").exists():
        ids += pq.read_table(output / "errors.parquet", columns=["sample_id"]).column("sample_id").to_pylist()
    return select_ids(ids, sample_ids, limit)


def _saved_tables(output: Path, ids: Sequence[str]) -> Iterator[pa.Table]:
    """The saved predictions of the samples `ids`, a shard at a time."""
    keep = pa.array(ids, pa.string())
    for table in iter_shards(output / "predictions"):
        yield table.filter(pc.is_in(table.column("sample_id"), value_set=keep))


def head_rows(head: pa.Table | None, table: pa.Table) -> pa.Table:
    """The first HEAD_ROWS rows of a run read a shard at a time: `head` so far plus `table`."""
    if head is None:
        return table.slice(0, HEAD_ROWS)
    if head.num_rows >= HEAD_ROWS:
        return head
    return pa.concat_tables([head, table.slice(0, HEAD_ROWS - head.num_rows)], promote_options="default")


def ground_truth_changed(fingerprint: dict[str, Any] | None, metrics: dict[str, Any], data_root: str) -> str | None:
    """A warning when the annotations an evaluation used (`metrics["annotations_sha256"]`) are
    not those the run was made with (its manifest's fingerprint), else None."""
    made = ((fingerprint or {}).get("data") or {}).get("annotations_sha256")
    used = metrics.get("annotations_sha256")
    if not used or not made or used == made:
        return None
    return (f"the annotations differ from the run's: evaluated against those in {data_root} (sha256 {used[:12]}), "
            f"the run was made with sha256 {made[:12]}")


@dataclass
class Offline:
    """`evaluate_offline`'s answer: the evaluation, the saved run it read, and what it said."""

    evaluation: Evaluation
    saved: Any  # the RunOutput read (a local copy for a run in object storage)
    record: dict[str, Any] | None  # its run.json
    data_root: Any  # the Location of the ground truth
    options: Any  # the task's options the evaluation used


def evaluate_offline(task: Any, predictions: str | Path, data_root: str | Path,
                     storage_options: dict[str, Any] | None = None, changes: dict[str, Any] | None = None,
                     sample_ids: Sequence[str] | None = None, limit: int | None = None,
                     ignore_missing: bool = False, warn: Callable[[str], None] = log.warning,
                     engine: str | None = None) -> Offline:
    """The metrics of saved predictions (a run's folder or URL, or another tool's results file)
    against the ground truth at `data_root`, without Ray or the model: what `rayinfer eval`
    and `rayinfer.evaluate` give. The task's options are the run's own with `changes`; remote
    data is read with `storage_options`, else those the job ran with. `warn` gets one line each
    for a run still being written (before evaluating) and annotations other than the run's.
    `engine`: the task's evaluation engine (`Task.engines`; default its first)."""
    from rayinfer.datasets.storage import Location
    from rayinfer.jobs.lock import describe, holder
    from rayinfer.jobs.output import local_run

    saved = local_run(str(predictions), storage_options)  # a run in object storage: copied here
    out = saved.root
    record = read_run_record(out) if out.is_dir() else None
    options = task.options_with(task.saved_options(SavedRun(out, [], record)) if out.is_dir() else None,
                                changes or {})
    storage = storage_options or (record or {}).get("config", {}).get("storage_options") or {}
    root = Location.of(str(data_root), storage)
    writer = holder(str(predictions), storage)
    if writer:
        warn(f"{describe(writer, str(predictions))}: the run is incomplete, and these metrics are of the shards "
             "committed so far")
    ev = task.evaluate_saved(out, root, sample_ids=sample_ids, limit=limit, options=options,
                             ignore_missing=ignore_missing, engine=engine)
    changed = ground_truth_changed(SavedRun(out, [], record).fingerprint() if out.is_dir() else None, ev.metrics,
                                   str(data_root))
    if changed:
        warn(changed)
    return Offline(ev, saved, record, root, options)


def compare(a: Path, b: Path) -> list[tuple[str, float | None, float | None, float | None]]:
    """(metric, value in a, value in b, b - a) for every scalar metric of two runs of the
    same task (runs of different tasks, or a folder without metrics, are a setup error)."""
    ma, mb = _metrics_of(a), _metrics_of(b)
    ta, tb = _task_of(a), _task_of(b)
    if ta and tb and ta != tb:
        raise SetupError(f"cannot compare a {ta} run ({a}) with a {tb} run ({b}): their metrics mean different things")
    rows = []
    for key in [k for k in ma if isinstance(ma[k], (int, float))] + [k for k in mb if k not in ma and isinstance(mb[k], (int, float))]:
        va, vb = ma.get(key), mb.get(key)
        delta = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        rows.append((key, va, vb, delta))
    return rows


def _metrics_of(run: Path) -> dict[str, Any]:
    path = Path(run) / "metrics.json"
    if not path.is_file():
        raise SetupError(f"{path} not found: is {run} a finished rayinfer run?")
    try:
        metrics = json.loads(path.read_text())
    except ValueError as exc:
        raise SetupError(f"{path}: not JSON ({exc})") from None
    if not isinstance(metrics, dict):
        raise SetupError(f"{path}: expected an object of metrics")
    return metrics


def _task_of(run: Path) -> str | None:
    """The task a run was made by (run.json's config), if it says."""
    try:
        return read_run_record(Path(run))["config"]["task"]  # type: ignore[index]
    except (OSError, ValueError, KeyError, TypeError):
        return None

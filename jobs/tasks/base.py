"""What a task is: the hooks the pipeline calls, and their defaults.

A task (COCO detection, NYU depth, ...) is one module with one `Task` subclass; the
pipeline (driver, offline evaluation, CLI, report, demo) calls these hooks and never
asks which task it runs. The template is Ultralytics' `BaseValidator`: one base class,
a task is a file of hooks.

    class Classification(Task):
        name = "toy"

        def dataset(self, cfg):                 # the reader: samples, load, ground truth
            return ToyDataset(cfg.data_root)

        def family(self, cfg, dataset, model): # model family: inputs and one row per sample
            return ToyFamily(model.inputs)

        def evaluate(self, run, data_root, options, engine=None):
            table = run.table()
            return Evaluation(self.name, {"top1": ...}, head=table.slice(0, 16), rows=table.num_rows,
                              sample_ids=run.ids)

and one line in `rayinfer.jobs.tasks.REGISTRY`.

Per-sample objects (the dataset reader, the family) travel to the inference actors
pickled: they hold paths and options, never loaded annotations (see CocoDataset.__getstate__).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from rayinfer.datasets.base import ModelFamily, Dataset, SetupError
from rayinfer.datasets.storage import Location
from rayinfer.jobs.config import ConfigError, from_data

from rayinfer.jobs.evaluate import Evaluation, SavedRun, StreamingEvaluation

if TYPE_CHECKING:
    from rayinfer.actors.model import Model
    from rayinfer.jobs.report import Figure


@dataclasses.dataclass
class Table:
    """A summary table: shown by `rayinfer eval` and in the report."""

    title: str
    header: list[str]
    rows: list[list[Any]]
    #: the report sorts the rows by this column, highest first (None: as given), the first
    #: `pinned` rows (totals) kept on top
    sort_by: str | None = None
    pinned: int = 0

    def sorted_rows(self) -> list[list[Any]]:
        if self.sort_by is None:
            return self.rows
        at = self.header.index(self.sort_by)
        rest = sorted(self.rows[self.pinned:], key=lambda r: (r[at] is not None, r[at] or 0), reverse=True)
        return self.rows[:self.pinned] + rest


class RunningMetric:
    """A figure for the progress bar that costs nothing to keep up. The default shows none."""

    def add(self, rows: pa.Table) -> None:
        """Called with each committed shard's predictions."""

    def text(self) -> str:
        return ""


class Task:
    """The hooks of one task. Subclasses set `name` and implement `dataset`, `family` and
    `evaluate`; the rest have defaults."""

    #: the name on the command line (`rayinfer run NAME`) and in run.json
    name: str = ""
    #: this task's options (a dataclass whose fields carry `metadata["help"]`, each a flag of
    #: `rayinfer run NAME`), or None; and the name they go by in the `--resume` fingerprint
    options_type: type | None = None
    options_key: str | None = None
    #: the metrics shown first, in this order (default: every number in metrics.json)
    summary_keys: tuple[str, ...] = ()
    #: the report's figure files (report/FILE: .png, .jpg for photographs), recorded in the
    #: run's manifest before writing
    figure_names: tuple[str, ...] = ()
    #: the metrics in the report's header (default: the first four of `summary_keys`)
    headline_keys: tuple[str, ...] = ()
    #: paths under a data root that together say it holds this task's dataset (what `rayinfer
    #: bench --data-root` and `doctor` recognise it by); () for a task that reads no files
    layout: tuple[str, ...] = ()
    #: the built-in demo model (with `write_demo`), or None when the task has no demo
    demo_model: Path | None = None
    #: the evaluation engines the task can compute its metrics with, the default first
    #: (COCO: `--coco-engine`); () where it has one way
    engines: tuple[str, ...] = ()

    # -- the job ----------------------------------------------------------------------------
    def dataset(self, cfg: Any) -> Dataset:
        """The reader for `cfg.data_root` (cheap: annotations load on first use)."""
        raise NotImplementedError

    def family(self, cfg: Any, dataset: Dataset, model: Model) -> ModelFamily:
        """The model family for this dataset, checked against the model's signature."""
        raise NotImplementedError

    def options(self, cfg: Any) -> Any:
        """This task's options (an `options_type`), from the values `cfg.options` sets over
        the defaults; None for a task without options. A key the task does not have, or a
        value of the wrong type, is a ConfigError naming it."""
        known = [f.name for f in dataclasses.fields(self.options_type)] if self.options_type else []
        unknown = sorted(set(cfg.options) - set(known))
        if unknown:
            raise ConfigError(f"task {self.name!r} has no option {', '.join(unknown)} "
                              f"({'its options: ' + ', '.join(known) if known else 'it takes none'})")
        return from_data(self.options_type, dict(cfg.options), "options.") if self.options_type else None

    def resolved_options(self, cfg: Any, family: ModelFamily) -> Any:
        """The options the job really uses, once the model is known (a declared preprocessing
        profile replaces `auto`, say): in the fingerprint, run.json and the evaluation."""
        return self.options(cfg)

    def saved_options(self, run: SavedRun) -> Any:
        """The options a saved job used: run.json's `task_options`, else its config's (runs
        written before `task_options` kept them in a config section named `options_key`);
        without a run.json (the job itself evaluating, before it writes one; a driver that
        died), those of the manifest's fingerprint; else None."""
        if self.options_type is None:
            return None
        recorded = None
        if run.record is not None:
            recorded = run.options()
            if recorded is None:
                config = run.record.get("config") or {}
                recorded = config.get(self.options_key) if self.options_key in config else config.get("options")
        else:
            recorded = (run.fingerprint() or {}).get(self.options_key or "task_options")
        return from_data(self.options_type, dict(recorded), "task_options.") if recorded is not None else None

    def running_metric(self) -> RunningMetric:
        return RunningMetric()

    # -- the results ------------------------------------------------------------------------
    def streaming_evaluation(self, dataset: Dataset, ids: Sequence[str], options: Any, engine: str | None = None,
                             exports: Path | None = None) -> StreamingEvaluation | None:
        """The metrics over the samples `ids` of `dataset`, fed shard by shard while the job
        runs (jobs/streaming.py), writing its export files into the folder `exports` as it
        goes; or None: the job evaluates the saved run once every shard is in (`evaluate`),
        as a task whose actors compute per-sample metrics can afford."""
        return None

    def evaluate_saved(self, predictions: str | Path, data_root: str | Path | Location,
                       sample_ids: Sequence[str] | None = None, limit: int | None = None,
                       options: Any = None, ignore_missing: bool = False, engine: str | None = None) -> Evaluation:
        """The metrics of a saved run (a folder), or of another tool's results file where the
        task reads one, against the data at `data_root` (a folder, or a Location in object
        storage). `options`: the task's options (default: the run's own). `ignore_missing`:
        samples the ground truth lacks are left out instead of refused (`SavedRun.missing`).
        `engine`: one of `engines` (default: the first). `rayinfer eval` calls this, and the
        job where the task has no `streaming_evaluation`."""
        path, root = Path(predictions), Location.of(data_root)
        if engine is not None and engine not in self.engines:
            raise SetupError(f"task {self.name!r} has no evaluation engine {engine!r}"
                             f"{' (its engines: ' + ', '.join(self.engines) + ')' if self.engines else ''}")
        if path.is_file():
            return self.evaluate_file(path, root, sample_ids, limit, options, engine)
        return self.evaluate(SavedRun.open(path, sample_ids, limit, ignore_missing=ignore_missing), root, options,
                             engine)

    def evaluate(self, run: SavedRun, data_root: Location, options: Any, engine: str | None = None) -> Evaluation:
        """Dataset metrics of a saved run (its samples without a row count as misses)."""
        raise NotImplementedError

    def evaluate_file(self, path: Path, data_root: Location, sample_ids: Any, limit: int | None,
                      options: Any, engine: str | None = None) -> Evaluation:
        """Metrics of a results file of another tool; tasks that read none refuse."""
        raise SetupError(f"{path}: task {self.name!r} evaluates rayinfer output folders only")

    def summary(self, ev: Evaluation) -> list[str]:
        """The metrics shown first (`rayinfer eval`, the report): `summary_keys`, or every number."""
        return list(self.summary_keys) or [k for k, v in ev.metrics.items() if isinstance(v, (int, float))]

    def headline(self, ev: Evaluation) -> list[str]:
        """The few metrics the report's header shows."""
        return list(self.headline_keys) or self.summary(ev)[:4]

    def tables(self, ev: Evaluation, everything: bool = False) -> list[Table]:
        """Sliced metrics (per class, per depth range, ...): the summary after `run` and
        `eval`, and the report's tables. `everything`: also the empty slices (`-v`)."""
        return []

    def figures(self, ev: Evaluation, data_root: Location, folder: Path, options: Any) -> list[Figure]:
        """The report's figures (`rayinfer.jobs.report.save_figure`: each written to
        folder/FILE, with a caption saying how to read it)."""
        return []

    def compare_figures(self, a: Evaluation, b: Evaluation, runs: tuple[SavedRun, SavedRun], data_root: Location,
                        folder: Path, labels: tuple[str, str]) -> list[Figure]:
        """The figures of `rayinfer compare A B --report` (`a`, `b`: the two runs evaluated
        on the same ground truth; `runs`: their predictions). The default draws none."""
        return []

    # -- the demo ---------------------------------------------------------------------------
    def write_demo(self, dest: Path) -> None:
        """Write the demo dataset into `dest` (an empty folder)."""
        raise SetupError(f"task {self.name!r} has no built-in demo: pass --data-root and --model")

    # -- helpers ----------------------------------------------------------------------------
    def options_with(self, base: Any, changes: dict[str, Any]) -> Any:
        """`base` (the run's options, or the defaults) with `changes` applied; a change this
        task's options do not have is a setup error naming it."""
        if base is None and self.options_type is not None:
            base = self.options_type()
        if not changes:
            return base
        known = {f.name for f in dataclasses.fields(base)} if dataclasses.is_dataclass(base) else set()
        unknown = sorted(set(changes) - known)
        if unknown:
            raise SetupError(f"task {self.name!r} has no option {', '.join(unknown)}")
        return dataclasses.replace(base, **changes)


def options_record(options: Any) -> Any:
    """Options as plain data (run.json, the fingerprint)."""
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else options

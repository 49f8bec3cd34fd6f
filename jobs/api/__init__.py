"""rayinfer from Python: the same jobs as the `rayinfer` command, for notebooks and pipelines.

    import rayinfer

    result = rayinfer.run("coco", data_root="data/coco", model="yolov8n.onnx", conf_thres=0.001)
    result.metrics["AP"]                 # metrics.json, as a dict
    result.predictions                   # a pyarrow Table (read when first asked for); .to_pandas()
    result.errors                        # errors.parquet, a pyarrow Table
    result.run                           # run.json
    result.report, result.output         # report.html's path, the run's folder or URL
    result                               # its repr is the summary the terminal shows

    rayinfer.evaluate("coco", predictions="runs/coco", data_root="data/coco")   # metrics, offline
    rayinfer.compare("runs/a", "runs/b")                                        # metric deltas

`run` takes every option of `rayinfer run TASK` as a keyword: the job's (`JobConfig`'s fields:
`data_root`, `model`, `output`, `runtime`, `precision`, ...) and the task's (`conf_thres`, ...),
validated by the same typed configuration, so a bad value raises `ConfigError` or
`SetupError` with the command line's one-line message. With neither `data_root` nor `model`,
it runs the built-in demo, as `rayinfer run TASK` does.

Ray: where `ray.is_initialized()` (a notebook that called `ray.init(address=...)`, or code
running as a Ray Job's entrypoint), the job uses that session and leaves it running;
otherwise it starts Ray on this host for the job and stops it after, as the command does.

This file is the package's `__init__.py` (pyproject's package-dir maps `rayinfer` here).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rayinfer.datasets.base import SetupError
from rayinfer.jobs.config import ConfigError, JobConfig

__all__ = ["ConfigError", "Result", "SetupError", "compare", "evaluate", "run"]


@dataclass
class Result:
    """A finished job: its figures, and its outputs read when first asked for."""

    #: the run's folder (a local copy for a run kept in object storage) and where it is kept
    folder: Path
    output: str
    metrics: dict[str, Any]
    run: dict[str, Any]
    exit_code: int
    _tables: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def predictions(self) -> Any:
        """The prediction rows, one per sample, as one pyarrow Table."""
        if "predictions" not in self._tables:
            from rayinfer.jobs.output import read_shards

            self._tables["predictions"] = read_shards(self.folder / "predictions")
        return self._tables["predictions"]

    @property
    def errors(self) -> Any:
        """One row per failed sample (errors.parquet), as a pyarrow Table."""
        if "errors" not in self._tables:
            import pyarrow.parquet as pq

            from rayinfer.datasets.base import ERROR_SCHEMA

            path = self.folder / "errors.parquet"
            self._tables["errors"] = pq.read_table(path) if path.is_file() else ERROR_SCHEMA.empty_table()
        return self._tables["errors"]

    @property
    def report(self) -> Path | None:
        path = self.folder / "report.html"
        return path if path.is_file() else None

    def summary(self) -> str:
        """The summary `rayinfer run` prints after its tables."""
        from rayinfer.jobs.cli import _summary

        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            _summary(self.metrics, self.run)
        return text.getvalue().rstrip("\n").replace(f"Results saved to {self.folder}", f"Results saved to {self.output}")

    def __repr__(self) -> str:
        return self.summary()


def _config(task: str, options: dict[str, Any]) -> JobConfig:
    """A JobConfig from keywords, as the command line builds one from flags."""
    from rayinfer.jobs.cli import _defaults_for_demo
    from rayinfer.jobs.tasks import get_task

    from rayinfer.actors.backends import option_keys

    job_fields = {f.name for f in fields(JobConfig)} | set(option_keys())  # option_keys: `openvino_device=`
    data: dict[str, Any] = {"task": task, **{k: v for k, v in options.items() if k in job_fields}}
    task_options = {k: v for k, v in options.items() if k not in job_fields}
    if task_options:
        data["options"] = {**data.get("options", {}), **task_options}
    data.setdefault("progress", True)
    _defaults_for_demo(data)
    cfg = JobConfig.from_dict(data)
    get_task(cfg.task).options(cfg)  # the task's options checked now, naming the wrong one
    return cfg


def run(task: str, **options: Any) -> Result:
    """Run a job (see the module docstring); returns when it has ended."""
    from rayinfer.jobs.driver import run_job
    from rayinfer.jobs.output import local_run

    cfg = _config(task, options)
    outcome = run_job(cfg)
    output = outcome.run["config"]["output"]
    folder = local_run(output, cfg.storage_options).root
    return Result(folder, output, outcome.metrics, outcome.run, outcome.exit_code)


def evaluate(task: str, predictions: str | Path, data_root: str | Path, **options: Any) -> dict[str, Any]:
    """The metrics of saved predictions (a run's folder or URL, or a COCO results JSON) against
    the ground truth at `data_root`, without Ray or the model: `rayinfer eval`'s numbers.
    `options`: the task's evaluation options (default: the run's own), `sample_ids`, `limit`,
    `ignore_missing_images`, `storage_options`, `coco_engine` (COCO: numpy or pycocotools)."""
    from rayinfer.jobs.evaluate import evaluate_offline
    from rayinfer.jobs.tasks import get_task

    storage = options.pop("storage_options", None) or {}
    sample_ids, limit = options.pop("sample_ids", None), options.pop("limit", None)
    ignore_missing = bool(options.pop("ignore_missing_images", False))
    engine = options.pop("coco_engine", None)
    done = evaluate_offline(get_task(task), predictions, data_root, storage, options, sample_ids, limit, ignore_missing,
                            engine=engine)
    return done.evaluation.metrics


def compare(a: str | Path, b: str | Path, storage_options: dict[str, Any] | None = None) -> dict[str, tuple]:
    """{metric: (value in a, value in b, b - a)} for two runs of one task."""
    from rayinfer.jobs.evaluate import compare as compare_runs
    from rayinfer.jobs.output import local_run

    rows = compare_runs(local_run(str(a), storage_options).root, local_run(str(b), storage_options).root)
    return {name: (va, vb, delta) for name, va, vb, delta in rows}

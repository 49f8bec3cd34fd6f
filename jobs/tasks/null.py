"""The `null` task: N empty samples through the model, nothing read, nothing scored; for
benchmarks of the pipeline itself."""

from __future__ import annotations

from typing import Any

from rayinfer.datasets.base import ModelFamily, Dataset
from rayinfer.datasets.storage import Location
from rayinfer.jobs.evaluate import Evaluation, SavedRun
from rayinfer.jobs.tasks.base import Task


class NullTask(Task):
    name = "null"

    def dataset(self, cfg: Any) -> Dataset:
        from rayinfer.datasets.null import NullDataset

        return NullDataset(cfg.data_root, cfg.limit or 1000)

    def family(self, cfg: Any, dataset: Dataset, model: Any) -> ModelFamily:
        from rayinfer.actors.families.null import NullFamily

        return NullFamily(model.inputs)

    def evaluate(self, run: SavedRun, data_root: Location, options: Any, engine: str | None = None) -> Evaluation:
        from rayinfer.datasets.null import NullDataset

        table = run.table()
        metrics = NullDataset(data_root, len(run.ids)).evaluate(table, run.ids)
        return Evaluation(self.name, metrics, head=table.slice(0, 16), rows=table.num_rows, sample_ids=run.ids)


TASK = NullTask()

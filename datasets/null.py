"""The `null` task: N empty samples, for benchmarks (the pass-through family is actors/families/null.py).

It runs the whole pipeline (scheduler, actors, request queue, driver, Parquet)
with trivial host work, so what is measured is the pipeline's own overhead and the
device (e.g. a simulated one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from rayinfer.datasets.base import Sample


class NullDataset:
    name = "null"

    def __init__(self, root: str | Path, count: int) -> None:
        self.root = Path(root)
        self.count = count

    def samples(self) -> list[Sample]:
        return [Sample(f"{i:08d}", "") for i in range(self.count)]

    def load(self, sample: Sample) -> None:
        return None

    def fingerprint(self) -> dict[str, Any]:
        return {"dataset": self.name, "count": self.count}

    def exports(self, tables: Callable[[], Iterable[pa.Table]]) -> dict[str, Any]:
        return {}

    def evaluate(self, predictions: pa.Table, sample_ids: Sequence[str] | None = None) -> dict[str, Any]:
        return {"images": len(sample_ids) if sample_ids is not None else predictions.num_rows,
                "predictions": predictions.num_rows}

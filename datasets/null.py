"""The `null` task: N empty samples and a pass-through adapter, for benchmarks.

It runs the whole pipeline (loader stage, actors, request queue, driver, Parquet)
with trivial host work, so what is measured is the pipeline's own overhead and the
device (e.g. a simulated one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from actors.model import TensorSpec
from datasets.base import Sample


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


class NullAdapter:
    """Feeds zeros of the model's input shape; records nothing but the common columns."""

    schema = pa.schema([])

    def __init__(self, inputs: Sequence[TensorSpec]) -> None:
        self.feed = {s.name: np.zeros(tuple(d or 1 for d in s.shape), s.dtype) for s in inputs}

    def preprocess(self, raw: Any, sample: Sample) -> tuple[dict[str, np.ndarray], None]:
        return self.feed, None

    def postprocess(self, outputs: Sequence[np.ndarray], meta: Any, sample: Sample) -> dict[str, Any]:
        return {}

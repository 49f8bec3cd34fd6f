"""The pass-through model family of the `null` task: zeros in, nothing recorded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from rayinfer.actors.model import TensorSpec
from rayinfer.datasets.base import Sample


class NullFamily:
    """Feeds zeros of the model's input shape; records nothing but the common columns."""

    schema = pa.schema([])

    def __init__(self, inputs: Sequence[TensorSpec]) -> None:
        self.feed = {s.name: np.zeros(tuple(d or 1 for d in s.shape), s.dtype) for s in inputs}

    def preprocess(self, raw: Any, sample: Sample) -> tuple[dict[str, np.ndarray], None]:
        return self.feed, None

    def postprocess(self, outputs: Sequence[np.ndarray], meta: Any, sample: Sample) -> dict[str, Any]:
        return {}

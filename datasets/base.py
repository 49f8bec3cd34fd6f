"""The two seams a job is made of: a dataset and a task family.

- `Dataset`: lists samples with stable ids, loads one sample's raw data on the host,
  and evaluates saved prediction rows against its ground truth. Knows nothing of models or Ray.
- `ModelFamily` (dataset x model family): turns raw data into model inputs, and model
  outputs into one row of the predictions table.

The pipeline runs any (dataset, family) pair; a new dataset or model family is a new
class here, never a copy of the job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from rayinfer.datasets.storage import Location


class SampleError(Exception):
    """One sample cannot be processed. The job records it and goes on. `transient`: the
    failure says nothing about the sample (the network failed through every retry), so
    `--resume` tries it again."""

    def __init__(self, message: str, stage: str = "load", transient: bool = False) -> None:
        super().__init__(message)
        self.stage = stage
        self.transient = transient


class SetupError(Exception):
    """The job cannot start (bad annotation file, unusable model, ...): one clear line."""


@dataclass(frozen=True)
class Sample:
    """A unit of work: a stable id and the file it comes from (relative to the data root)."""

    sample_id: str
    file: str
    info: Mapping[str, Any] = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | Path) -> dict[str, Any]:
    """{"path", "size", "sha256"}: what `--resume` compares for a model file."""
    p = Path(path)
    return {"path": str(p), "size": p.stat().st_size, "sha256": sha256_file(p)}


def safe_join(root: Path, relative: str) -> Path:
    """`sample_location` for a local folder, as a Path."""
    return sample_location(Location.of(root), relative).path


def sample_location(root: Location, relative: str) -> Location:
    """`root / relative` for a sample's file, a SampleError for a name that climbs out of
    the root (`..`, an absolute path), as an annotation file might hold. Checked on the
    names, not after following symbolic links: links to files elsewhere are the owner's choice."""
    try:
        return root / relative
    except ValueError as exc:
        raise SampleError(str(exc), stage="load") from None


class Dataset(Protocol):
    name: str
    root: Location

    def samples(self) -> list[Sample]:
        """Every sample, in a stable order."""
        ...

    def load(self, sample: Sample) -> Any:
        """Raw host data for one sample (uint8 image, depth map, ...). Raises SampleError.

        A reader may also offer `fetch(sample) -> bytes | None` (the sample's file in one
        request, where the data root is remote; None where `load` reads it itself) and take
        its result as `load(sample, data)`: an actor then fetches samples ahead, many at once,
        in I/O threads, and decodes them as they arrive. An image reader may take
        `load(sample, data, draft=(h, w))`, the size the family's `draft` says preprocessing
        shrinks images to, and decode large JPEGs at a reduced scale."""
        ...

    def evaluate(self, predictions: pa.Table, sample_ids: Sequence[str] | None = None) -> dict[str, Any]:
        """Dataset metrics from the saved predictions table, over `sample_ids`
        (default: the samples in the table; samples without a row count as misses)."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this data for `--resume` (paths, sizes, counts)."""
        ...

    def exports(self, tables: Callable[[], Iterable[pa.Table]]) -> dict[str, Any]:
        """Extra files the task writes next to metrics.json: name -> a JSON object, or a
        callable that writes the file's bytes to a binary file (for large ones). `tables()`
        gives the saved predictions a shard at a time (call it again to read them again)."""
        ...


class ModelFamily(Protocol):
    """Model-family specific steps around inference."""

    #: Columns this family adds to each row, beyond the common ones.
    schema: pa.Schema
    #: Optional: (h, w) preprocessing shrinks images to, passed to `Dataset.load` as `draft`
    #: (None or absent: the reader decodes at full size).
    draft: tuple[int, int] | None

    def preprocess(self, raw: Any, sample: Sample) -> tuple[dict[str, np.ndarray], Any]:
        """Model inputs and whatever postprocess needs to undo the transform."""
        ...

    def postprocess(self, outputs: Sequence[np.ndarray], meta: Any, sample: Sample) -> dict[str, Any]:
        """One row: a dict of the schema's columns."""
        ...


#: Columns every predictions table has, whatever the task.
COMMON_FIELDS = [
    pa.field("sample_id", pa.string()),
    pa.field("file", pa.string()),
    pa.field("shard", pa.int32()),
    pa.field("actor", pa.string()),
    pa.field("load_ms", pa.float32()),
    pa.field("preprocess_ms", pa.float32()),
    pa.field("queue_ms", pa.float32()),
    pa.field("infer_ms", pa.float32()),
    pa.field("postprocess_ms", pa.float32()),
]

ERROR_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string()),
        pa.field("file", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("message", pa.string()),
        pa.field("shard", pa.int32()),
        pa.field("actor", pa.string()),
        # True: the failure says nothing about the sample (actor lost, timeout); --resume retries it
        pa.field("transient", pa.bool_()),
    ]
)


def rows_schema(family_schema: pa.Schema) -> pa.Schema:
    return pa.schema(COMMON_FIELDS + list(family_schema))

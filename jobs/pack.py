"""`rayinfer pack coco|nyu`: a dataset's files as packed shards (see datasets/packed.py).

    rayinfer pack coco --data-root data/coco --to s3://bucket/coco-tar --format tar --samples-per-shard 256

The packed copy is read by the same `--data-root` flag; its samples keep their ids and file
names, so a job on it gives the same results as on the loose files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from rayinfer.datasets.base import Dataset, SampleError, SetupError
from rayinfer.datasets.packed import INDEX, member_key, write_pack
from rayinfer.datasets.storage import Location, storage_error

log = logging.getLogger(__name__)


def pack_dataset(dataset: Dataset, dest: Location, fmt: str, per_shard: int) -> dict[str, Any]:
    """Write `dataset` (loose files) packed under `dest`, which must hold nothing yet (nothing
    is overwritten). Returns {"shards", "samples", "skipped"}; a sample whose file cannot be
    read is skipped with a warning naming it (the job on the packed copy reports it missing)."""
    if not hasattr(dataset, "pack_members"):
        raise SetupError(f"the {dataset.name} dataset cannot be packed (its reader has no pack_members)")
    if per_shard < 1:
        raise SetupError(f"--samples-per-shard must be >= 1, got {per_shard}")
    if getattr(dataset, "pack", None) is not None:
        raise SetupError(f"{dataset.root} is packed already ({INDEX})")
    try:
        held = dest.listing() if not dest.is_local else (
            [p for p in dest.path.rglob("*")] if dest.path is not None and dest.path.exists() else [])
    except OSError as exc:
        raise SetupError(f"{dest}: {storage_error(exc)}") from None
    if held:
        raise SetupError(f"{dest} is not empty; nothing there was touched: choose another --to")
    samples = dataset.samples()
    skipped: list[str] = []

    def members() -> Iterator[tuple[str, dict[str, bytes]]]:
        for sample in samples:
            try:
                yield member_key(sample.file), dataset.pack_members(sample)
            except SampleError as exc:
                log.warning("skipped: %s", exc)
                skipped.append(sample.sample_id)

    try:
        for name, source in dataset.pack_extras().items():
            (dest / name).write_bytes(source.read_bytes())
        index = write_pack(members(), dest, fmt, per_shard)
    except OSError as exc:
        raise SetupError(f"cannot write {dest}: {storage_error(exc)}") from None
    return {"shards": len(index["shards"]), "samples": len(samples) - len(skipped), "skipped": skipped}
